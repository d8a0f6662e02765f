"""Stage `synthesize` as a Ray job: `ray job submit --working-dir . -- python jobs/synthesize.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["synthesize", *sys.argv[1:]]))
