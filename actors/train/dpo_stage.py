"""Stage `dpo`: reference pass on Ray Data, then DPO on Ray Train from the SFT model.

Pairs: RUN/pts/pairs (round 1, single-token PTS pairs) and RUN/dpo/pairs_full (round 2,
judge-guided full responses, phi4ray/posttrain/judged_pairs.py) when present. The pairs of one query in five
(by query id) are held out: they measure the policy's chosen-vs-rejected log-prob margin and
accuracy before and after. The stage also measures what PTS is for: p(success) on held-out
queries (`dpo.heldout_queries`, or the toy domain's), before and after, with 95% intervals.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from actors.run.off_driver import on_worker
from actors.train.pretrain_stages import train_stage
from phi4ray.posttrain.heldout import heldout_queries, paired_change, success_on_queries
from phi4ray.run.console import say
from phi4ray.run.stage import Stage, StageResult
from phi4ray.train.dpo import evaluate_policy, split_pairs
from phi4ray.train.jobs import dpo_job, folder_fingerprint, model_fingerprint, worker_split_check

REF_RECORD = "reference_key.json"


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


def run(ctx) -> StageResult:
    run_dir, cfg = ctx.run_dir, ctx.cfg
    job = dpo_job(run_dir, cfg)
    base = Path(job.init_from)
    d = run_dir / "dpo"
    sources = [p for p in (run_dir / "pts" / "pairs", d / "pairs_full") if p.is_dir()]
    inputs = {"pairs": [str(s) for s in sources], "init_from": str(base)}
    n_train, n_held = split_pairs(sources, d / "train", d / "heldout")
    if n_train < cfg.dpo.train.batch_size:
        # PTS keeping no query is an outcome, not a crash (an undertrained policy is never in
        # 0.2..0.8): say so loudly, record it, and leave RUN/models/sft as the newest model
        reason = (f"{n_train} training pairs, fewer than one batch (dpo.train.batch_size="
                  f"{cfg.dpo.train.batch_size}); search more queries (pts.queries) or train SFT longer")
        say(f"dpo: SKIPPED: {reason}")
        return StageResult(counts={"train_pairs": n_train, "heldout_pairs": n_held}, outputs={"skipped": reason},
                           inputs=inputs)
    gpu = cfg.serve.device == "gpu"
    queries = heldout_queries(cfg, d)

    def measure(model: Path) -> dict:
        success = on_worker(success_on_queries, model, queries, cfg.dpo.heldout_samples, cfg.pts.max_tokens,
                            cfg.pts.temperature, seed=cfg.seed, gpu=gpu)
        (d / f"heldout_success_{model.name}.json").write_text(json.dumps(success, indent=2))
        return {**on_worker(evaluate_policy, model, d / "heldout", gpu=gpu), **success}

    def evaluate() -> dict:
        after = measure(run_dir / "models" / "dpo")
        change, change_ci = paired_change(before, after)
        say(f"dpo: held-out pair margin {before.get('margin')} -> {after.get('margin')}, "
              f"accuracy {before.get('accuracy')} -> {after.get('accuracy')}; held-out success "
              f"{before['success']:.3f} +- {before['success_ci95']:.3f} -> {after['success']:.3f} "
              f"+- {after['success_ci95']:.3f} ({after['queries']} queries; paired change {change:+.3f} +- {change_ci:.3f})")
        return {"train_pairs": n_train, "heldout_pairs": n_held,
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


STAGE = Stage(
    name="dpo",
    check=worker_split_check("dpo.train"),
    summary="DPO on PTS pairs and judge-guided full pairs (reference log-probs precomputed)",
    run=run,
    sections=("dpo", "arith", "seed", "sft.heldout", "model", "midtrain.rope_theta", "pts.max_tokens",
              "pts.temperature", "pts.queries_kind"),
    reads=("sft", "pts"),
    outputs=("dpo", "models/dpo", "ray_train/dpo", "checkpoints/dpo"),
    headline=("train_pairs", "heldout_margin_before", "heldout_margin_after"),
)
