"""Stage `curate` as a Ray job: `ray job submit --working-dir . -- python jobs/curate.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
