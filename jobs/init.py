"""Stage `init` as a Ray job: `ray job submit --working-dir . -- python jobs/init.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["init", *sys.argv[1:]]))
