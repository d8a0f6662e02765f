"""Stage `pretrain` as a Ray job: `ray job submit --working-dir . -- python jobs/pretrain.py --preset tiny`."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
