"""Stage `eval` as a Ray job: `ray job submit --working-dir . -- python jobs/eval.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
