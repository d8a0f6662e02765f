"""Stages `dpo` and `dpo2`: the report's two DPO rounds, each a reference pass on Ray Data, then DPO
on Ray Train.

- `dpo` (round 1): from RUN/models/sft on PTS's single-token pairs (RUN/pts/pairs) -> RUN/models/dpo.
- `dpo2` (round 2, judge-guided): the round-1 model (RUN/models/sft where round 1 was skipped) and
  any `dpo.judge_policies` answer `dpo.judge_prompts` prompts on the fleet, the judge scores the
  responses (accuracy from each prompt's oracle where it has one) into full-response pairs
  (RUN/dpo2/pairs), then DPO from the round-1 model -> RUN/models/dpo2. Off when
  `dpo.judge_prompts` is 0.

In each round the pairs of one query in five (by query id) are held out: they measure the policy's
chosen-vs-rejected log-prob margin and accuracy before and after. Each round also measures what the
pairs are for: p(success) on held-out queries (`dpo.heldout_queries`, or the toy domain's), before
and after, with 95% intervals; a model's figure is kept in RUN/heldout/ and not measured twice.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from actors.posttrain.judge import judge_round
from actors.run.off_driver import on_worker
from actors.train.pretrain_stages import train_stage
from phi4ray.posttrain.heldout import heldout_queries, paired_change, success_on_queries
from phi4ray.posttrain.judge_prompts import check_judge_prompts, judge_files, judge_queries
from phi4ray.run.console import say
from phi4ray.run.errors import MissingInput
from phi4ray.run.paths import check_model_dir, is_model_dir, model_dir
from phi4ray.run.stage import Stage, StageResult, all_checks
from phi4ray.train.dpo import evaluate_policy, split_pairs
from phi4ray.train.jobs import dpo_job, folder_fingerprint, model_fingerprint, worker_split_check

REF_RECORD = "reference_key.json"
POLICIES_APP = "phi4ray-policies"  # round 2's other policies, beside the main fleet's round-1 model
# what both rounds' training and measures depend on; round 2 adds the rest of `dpo` (its judge)
TRAINING = ("dpo.beta", "dpo.loss_type", "dpo.label_smoothing", "dpo.sft_weight", "dpo.train",
            "dpo.heldout_queries", "dpo.heldout_size", "dpo.heldout_samples", "arith", "seed", "sft.heldout",
            "model", "midtrain.rope_theta", "pts.max_tokens", "pts.temperature", "pts.queries_kind")


def reference_pass(ctx, pairs: Path, model: Path, out: Path) -> None:
    """out/*.parquet: `pairs` with the reference model's log-probs. Kept when made from the same
    pairs and model: Ray Data names and orders its output files differently on every run, and the
    DPO loader's position in a checkpoint refers to the rows in the order it read them."""
    from actors.train.reference import add_reference_logps  # deferred: torch and Ray Data load only for the pass

    key = json.dumps({"pairs": folder_fingerprint(pairs, "*.parquet"), "model": model_fingerprint(model)})
    record = out / REF_RECORD
    if record.exists() and record.read_text() == key:
        return
    shutil.rmtree(out, ignore_errors=True)  # derived data of other pairs: Ray Data adds files to a folder
    with ctx.cluster.session(min_cpus=4):
        add_reference_logps(pairs, model, out, use_gpu=ctx.cfg.serve.device == "gpu")
    record.write_text(key)


def heldout_success(ctx, model: Path, queries: list[dict]) -> dict:
    """p(success) of `model` on the held-out queries, on a Ray worker; kept in RUN/heldout/<model>.json
    under what it depends on, so round 2's "before" is round 1's "after", not a second measure."""
    cfg = ctx.cfg
    key = {"model": model_fingerprint(model), "queries": [q["id"] for q in queries],
           "samples": cfg.dpo.heldout_samples, "max_tokens": cfg.pts.max_tokens,
           "temperature": cfg.pts.temperature, "seed": cfg.seed}
    record = ctx.run_dir / "heldout" / f"{model.name}.json"
    if record.is_file() and (old := json.loads(record.read_text())).get("key") == key:
        return old["success"]
    success = on_worker(success_on_queries, model, queries, cfg.dpo.heldout_samples, cfg.pts.max_tokens,
                        cfg.pts.temperature, seed=cfg.seed, gpu=cfg.serve.device == "gpu")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "success": success}, indent=2))
    return success


def train_round(ctx, stage: str, sources: list[Path], base: Path, extra: dict | None = None) -> StageResult:
    """One DPO round: `sources`' pairs split into training and held-out pairs, reference
    log-probs from `base`, DPO from `base` -> RUN/models/<stage>, measured before and after."""
    run_dir, cfg = ctx.run_dir, ctx.cfg
    job = dpo_job(run_dir, cfg, stage, init_from=base)
    d = run_dir / stage
    inputs = {"pairs": [str(s) for s in sources], "init_from": str(base)}
    n_train, n_held = split_pairs(sources, d / "train", d / "heldout")
    counts = {"train_pairs": n_train, "heldout_pairs": n_held, **(extra or {})}
    if n_train < cfg.dpo.train.batch_size:
        # no pairs is an outcome, not a crash (an undertrained policy is never in PTS's 0.2..0.8;
        # a judge that never separates two responses): say so loudly, record it, and leave the
        # newest model as it was
        reason = (f"{n_train} training pairs, fewer than one batch (dpo.train.batch_size="
                  f"{cfg.dpo.train.batch_size}); " + ("search more queries (pts.queries) or train SFT longer"
                                                      if stage == "dpo" else "judge more prompts (dpo.judge_prompts)"))
        say(f"{stage}: SKIPPED: {reason}")
        return StageResult(counts=counts, outputs={"skipped": reason}, inputs=inputs)
    gpu = cfg.serve.device == "gpu"
    queries = heldout_queries(cfg, d)

    def measure(model: Path) -> dict:
        return {**on_worker(evaluate_policy, model, d / "heldout", gpu=gpu), **heldout_success(ctx, model, queries)}

    def evaluate() -> dict:
        after = measure(model_dir(run_dir, stage))
        change, change_ci = paired_change(before, after)
        say(f"{stage}: held-out pair margin {before.get('margin')} -> {after.get('margin')}, "
            f"accuracy {before.get('accuracy')} -> {after.get('accuracy')}; held-out success "
            f"{before['success']:.3f} +- {before['success_ci95']:.3f} -> {after['success']:.3f} "
            f"+- {after['success_ci95']:.3f} ({after['queries']} queries; paired change {change:+.3f} +- {change_ci:.3f})")
        return {**counts,
                "heldout_margin_before": before.get("margin"), "heldout_margin_after": after.get("margin"),
                "heldout_pair_accuracy_before": before.get("accuracy"),
                "heldout_pair_accuracy_after": after.get("accuracy"), "heldout_queries": after["queries"],
                "heldout_success_before": before["success"], "heldout_success_after": after["success"],
                "heldout_success_ci95_before": before["success_ci95"],
                "heldout_success_ci95_after": after["success_ci95"],
                "heldout_success_change": change, "heldout_success_change_ci95": change_ci}

    with ctx.cluster.session(min_cpus=4):  # one Ray for the reference pass, the measures and the training
        reference_pass(ctx, d / "train", base, Path(job.tokens_dir))
        before = measure(base)
        return train_stage(ctx, job, inputs, evaluate)


def run_round1(ctx) -> StageResult:
    return train_round(ctx, "dpo", [p for p in (ctx.run_dir / "pts" / "pairs",) if p.is_dir()],
                       model_dir(ctx.run_dir, "sft"))


def start_policies(ctx, base: Path) -> tuple[list, list[tuple[str, object, str]]]:
    """Round 2's policies on the fleet: (apps started, [(label, app, model id)]). The round-1 model
    (`dpo`) on the main app, where the pts fleet is still up in a pipeline run (its weights are
    swapped in place); each of `dpo.judge_policies` (a run stage's model or a folder) on a side app."""
    main = ctx.fleet.start(str(base))
    others = {}
    for name in ctx.cfg.dpo.judge_policies:
        stage_dir = model_dir(ctx.run_dir, name)
        folder = stage_dir if is_model_dir(stage_dir) else check_model_dir(name, "dpo.judge_policies")
        others[name if folder == stage_dir else folder.name] = str(folder)
    side = ctx.fleet.start(others, app=POLICIES_APP) if others else None
    served = [("dpo", main, main.model_id), *((label, side, label) for label in others)]
    return [main, *([side] if side else [])], served


def run_round2(ctx) -> StageResult:
    run_dir, cfg = ctx.run_dir, ctx.cfg
    if not cfg.dpo.judge_prompts:
        reason = "dpo.judge_prompts=0: round 2 is off"
        say(f"dpo2: SKIPPED: {reason}")
        return StageResult(counts={"train_pairs": 0, "heldout_pairs": 0}, outputs={"skipped": reason})
    base = next((m for m in (model_dir(run_dir, "dpo"), model_dir(run_dir, "sft")) if is_model_dir(m)), None)
    if base is None:
        raise MissingInput(f"{run_dir}/models: neither dpo nor sft has a model: run `phi4ray sft` first")
    d = run_dir / "dpo2"
    queries, read = judge_queries(cfg, d)  # a bad file fails here, before an engine starts
    apps, served = start_policies(ctx, base)
    try:
        judged = judge_round(cfg, served, queries, d / "pairs")
    finally:
        for app in apps:  # eval serves the run's models on the main app next (see actors/posttrain/pts.py)
            ctx.fleet.release(app, keep=app is apps[0] and ctx.cluster.holding and cfg.serve.device == "cpu")
    say(f"dpo2: judge round: {judged['pairs']} pairs from {judged['prompts_in']} prompts; no pair: {judged['no_pair']}; "
        f"{judged['parse_failures']} of {judged['judge_calls']} judge answers unparsed")
    extra = {"prompts": read, "judge_round": {k: judged.get(k) for k in (
        "policies", "prompts_in", "pairs", "no_pair", "acceptance_rate", "judge_calls", "parse_failures",
        "decided_by")}}
    return train_round(ctx, "dpo2", [d / "pairs"], base, extra)


DPO_OUTPUTS = ("models/{0}", "ray_train/{0}", "checkpoints/{0}")
ROUND1 = Stage(
    name="dpo",
    check=worker_split_check("dpo.train"),
    summary="DPO round 1 on PTS pairs (reference log-probs precomputed)",
    run=run_round1,
    sections=TRAINING,
    reads=("sft", "pts"),
    outputs=("dpo", *(o.format("dpo") for o in DPO_OUTPUTS)),
    headline=("train_pairs", "heldout_margin_before", "heldout_margin_after"),
)


ROUND2 = Stage(
    name="dpo2",
    check=all_checks(worker_split_check("dpo.train"), check_judge_prompts),
    summary="DPO round 2 on judge-guided full-response pairs from the round-1 model",
    run=run_round2,
    sections=(*TRAINING, "dpo"),
    reads=("dpo",),
    files=judge_files,
    outputs=("dpo2", *(o.format("dpo2") for o in DPO_OUTPUTS)),
    headline=("train_pairs", "heldout_success_before", "heldout_success_after"),
)
