"""`python -m phi4ray.evals.converters FORMAT IN OUT [--quarantine Q] [--suite NAME] [--seed N]
[--language L]`: prints one line of counts; a user's error prints one line and exits 2."""
from __future__ import annotations

import argparse
import sys

from phi4ray.evals.converters.formats import FORMATS
from phi4ray.evals.converters.writer import convert, counts_line
from phi4ray.run.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phi4ray.evals.converters",
                                description="Convert a public benchmark file into a phi4ray suite JSONL (eval.files).")
    p.add_argument("format", metavar="FORMAT",
                   help="one of " + ", ".join(f"{f.name} ({f.kind} items)" for f in FORMATS.values()))
    p.add_argument("source", metavar="IN", help="the benchmark file (a folder of files for math and mmlu)")
    p.add_argument("out", metavar="OUT", help="the suite JSONL to write")
    p.add_argument("--quarantine", metavar="Q", help="where unusable records go (default OUT's name .quarantine.jsonl)")
    p.add_argument("--suite", help="the suite's name (default the format's, e.g. gsm8k, mgsm_de)")
    p.add_argument("--seed", type=int, default=0, help="gpqa: the seed of the option order (default 0)")
    p.add_argument("--language", default="", help="mgsm: the language (default from the file name, mgsm_de.tsv)")
    args = p.parse_args(argv)
    try:
        counts = convert(args.format, args.source, args.out, args.quarantine, suite=args.suite, seed=args.seed,
                         language=args.language)
    except UserError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(counts_line(args.format, counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
