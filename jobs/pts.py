"""Stage `pts` as a Ray job: `ray job submit --working-dir . -- python jobs/pts.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["pts", *sys.argv[1:]]))
