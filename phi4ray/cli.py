"""`phi4ray <stage> --preset NAME --run-dir RUN [key=value ...]` and `phi4ray run` for all stages."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from phi4ray.config import ConfigError, PRESETS
from phi4ray.manifest import read_manifest
from phi4ray.overrides import OverrideError, apply_overrides, dump_config, read_config_file
from phi4ray.presets import run_preset
from phi4ray.report import write_report
from phi4ray.stages import BY_NAME, STAGES


def _parser() -> argparse.ArgumentParser:
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
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. model.n_layers=2")

    for s in STAGES:
        text = s.summary.replace("%", "%%")  # argparse formats help strings with %
        sp = sub.add_parser(s.name, help=text, description=text)
        common(sp)
        if s.name == "serve":
            sp.add_argument("--model", help="HF model folder to serve (default: the run's newest model)")
            sp.add_argument("--smoke", action="store_true",
                            help="answer one chat request, then stop (default: serve until Ctrl-C)")
    common(sub.add_parser("config", help="print the resolved config as a file for --config (runs nothing)"))
    common(sub.add_parser("run", help="the whole pipeline, every stage in order (resumes completed stages)"))
    return p


def resolve_config(preset: str | None, config_file: str | None, overrides: list[str]):
    """(preset name, RunConfig): the preset, then the config file's lines, then the command line's
    key=value overrides; every value is checked here, before any work starts."""
    file_overrides: list[str] = []
    if config_file:
        file_preset, file_overrides = read_config_file(config_file)
        if preset and file_preset and preset != file_preset:
            raise ConfigError(f"--preset {preset} but {config_file} is a config of preset {file_preset!r}")
        preset = preset or file_preset
    preset = preset or "tiny"
    cfg = run_preset(preset)
    try:
        cfg = apply_overrides(cfg, file_overrides)
    except OverrideError as e:
        raise OverrideError(f"{config_file}: {e}") from None
    return preset, apply_overrides(cfg, overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        preset, cfg = resolve_config(args.preset, args.config, args.overrides)
    except (ConfigError, OverrideError) as e:
        print(f"phi4ray: config error: {e}", file=sys.stderr)
        return 2
    if args.stage == "config":
        print(dump_config(cfg, preset), end="")
        return 0
    # absolute: Ray workers run in their own working directories (on a cluster RUN must be shared)
    run_dir = Path(args.run_dir or f"runs/{preset}").resolve()

    stages = STAGES if args.stage == "run" else [BY_NAME[args.stage]]

    run_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    with _one_cluster(len(stages) > 1):
        _run_stages(args, cfg, run_dir, stages)
    print(f"phi4ray: ran {', '.join(s.name for s in stages)} in {time.time() - t_all:.1f}s; run dir {run_dir}; "
          f"report {run_dir / 'report' / 'index.md'}")
    return 0


def _one_cluster(hold: bool):
    """A pipeline's stages share one Ray cluster (actors.ray_session.one_cluster); importing it
    imports no Ray, so a config error or a lone `init` still starts nothing."""
    import contextlib

    if not hold:
        return contextlib.nullcontext()
    from actors.ray_session import one_cluster

    return one_cluster()


def _run_stages(args, cfg, run_dir: Path, stages) -> None:
    for stage in stages:
        t0 = time.time()
        before = read_manifest(run_dir, stage.name)
        if args.stage == "serve":  # the one stage a user runs by hand with its own flags
            from actors.serve_stage import run_serve

            result = run_serve(run_dir, cfg, model=args.model, block=not args.smoke)
        else:
            result = stage.run(run_dir, cfg)
        # a stage that found its work done returns the manifest it had
        resumed = bool(before) and before.get("finished_at") == result.get("finished_at")
        status = "already complete" if resumed else f"done in {time.time() - t0:.1f}s"
        print(f"[{stage.name:>10}] {status}  outputs={json.dumps(result.get('outputs', {}))}"
              f"  counts={json.dumps(result.get('counts', {}))}")
        # rewritten after every stage: a run that stops anywhere still has its report so far
        write_report(run_dir, [s.name for s in STAGES])


if __name__ == "__main__":
    sys.exit(main())
