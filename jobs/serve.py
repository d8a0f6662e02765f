"""Stage `serve` as a Ray job: `ray job submit --working-dir . -- python jobs/serve.py --model DIR`.

Joins the cluster in RAY_ADDRESS (set by `ray job submit`) and serves until the job is stopped.
"""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
