"""`phi4ray <stage> --preset NAME --run-dir RUN [key=value ...]` and `phi4ray run` for all stages.

The CLI resolves and checks the config, builds the run context (the Ray cluster and the fleet the
run owns) and hands each stage to phi4ray.run.stage.run_stage. A user's error prints one line and
exits 2 (`--verbose` adds the traceback); a stage that breaks prints its traceback and exits 1.
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from actors.context import RunContext
from jobs import registry
from phi4ray.presets import PRESETS, resolve_config
from phi4ray.run import console
from phi4ray.run.errors import ConfigError, UserError
from phi4ray.run.overrides import OverrideError, dump_config
from phi4ray.run.stage import StageFailed, run_stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phi4ray",
        description="The Phi-4 training recipe on Ray. Stages run in this order; `run` runs them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    def common(sp):
        sp.add_argument("--preset", default=None, help=f"one of {', '.join(sorted(PRESETS))} (default tiny)")
        sp.add_argument("--config", default=None, metavar="FILE",
                        help="a config file of `key = value` lines (`phi4ray config` writes one); "
                             "key=value arguments override it")
        sp.add_argument("--run-dir", default=None, help="run directory (default runs/<preset>)")
        sp.add_argument("--verbose", action="store_true",
                        help="Ray's, Ray Data's and vLLM's logs on the console (default: RUN/logs/<stage>.log), "
                             "and tracebacks for user errors too")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. model.n_layers=2")

    for s in registry.STAGES:
        text = s.summary.replace("%", "%%")  # argparse formats help strings with %
        sp = sub.add_parser(s.name, help=text, description=text)
        common(sp)
        for f in s.flags:
            sp.add_argument(f"--{f.name}", help=f.help, **({"action": "store_true"} if f.switch else {}))
    common(sub.add_parser("config", help="print the resolved config as a file for --config (runs nothing)"))
    common(sub.add_parser("run", help="the whole pipeline, every stage in order (resumes completed stages)"))
    return p


def stage_options(stage, args) -> dict:
    """The stage's own flags that were given, as ctx.options (part of its completeness key)."""
    return {f.name: getattr(args, f.name) for f in stage.flags if getattr(args, f.name, None)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except UserError as e:
        if args.verbose:
            traceback.print_exc()
        kind = "config error" if isinstance(e, (ConfigError, OverrideError)) else "error"
        print(f"phi4ray: {kind}: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        traceback.print_exception(e.__cause__ or e)
        if e.log and not args.verbose:
            print(f"--- the last lines of {e.log} ---", *console.tail(e.log), "---", sep="\n", file=sys.stderr)
        print(f"phi4ray: {e}", file=sys.stderr)
        return 1
    finally:
        console.install(None)


def _main(args) -> int:
    preset, cfg = resolve_config(args.preset, args.config, args.overrides)
    if args.stage == "config":
        print(dump_config(cfg, preset), end="")
        return 0
    # absolute: Ray workers run in their own working directories (on a cluster RUN must be shared)
    run_dir = Path(args.run_dir or f"runs/{preset}").resolve()
    console.install(console.Console(verbose=args.verbose))
    order = registry.STAGES
    unknown = sorted(set(cfg.stages) - {s.name for s in order})
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; the pipeline's are {[s.name for s in order]}")
    if args.stage == "run":
        stages = [s for s in order if not cfg.stages or s.name in cfg.stages]
    else:
        stages = [s for s in order if s.name == args.stage]
    alone = len(stages) == 1
    options = stage_options(stages[0], args) if alone else {}
    t_all = time.time()
    # between stages (starting and stopping Ray, deleting Serve apps) the logs go to run.log
    with console.logging_to(run_dir / "logs" / "run.log"), \
            RunContext.local(run_dir, cfg, hold=not alone, options=options, dashboard=True) as ctx:
        ctx.interactive = alone
        for stage in stages:
            run_stage(stage, ctx, order=order, force=alone and stage.rerun_alone)
    console.say(f"phi4ray: ran {', '.join(s.name for s in stages)} in {time.time() - t_all:.1f}s; run dir {run_dir}; "
          f"report {run_dir / 'report' / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
