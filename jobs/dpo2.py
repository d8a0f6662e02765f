"""Stage `dpo2` as a Ray job: `ray job submit --working-dir . -- python jobs/dpo2.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["dpo2", *sys.argv[1:]]))
