"""Stage `midtrain` as a Ray job: `ray job submit --working-dir . -- python jobs/midtrain.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["midtrain", *sys.argv[1:]]))
