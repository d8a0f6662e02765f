"""Stage `sft` as a Ray job: `ray job submit --working-dir . -- python jobs/sft.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
