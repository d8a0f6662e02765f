"""Stage `tokenize` as a Ray job: `ray job submit --working-dir . -- python jobs/tokenize_stage.py --preset tiny`.

Not jobs/tokenize.py: `python jobs/X.py` puts jobs/ first on sys.path, and that name would shadow
the standard library's tokenize module (imported by inspect, linecache, ...)."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenize", *sys.argv[1:]]))
