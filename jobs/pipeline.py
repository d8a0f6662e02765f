"""The whole pipeline as a Ray job: `ray job submit --working-dir . -- python jobs/pipeline.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
