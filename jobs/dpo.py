"""Stage `dpo` as a Ray job: `ray job submit --working-dir . -- python jobs/dpo.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["dpo", *sys.argv[1:]]))
