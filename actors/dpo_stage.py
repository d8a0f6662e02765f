"""Stage `dpo`: reference pass, then DPO on Ray Train from the SFT model.

Pairs: RUN/pts/pairs (round 1, single-token PTS pairs) and RUN/dpo/pairs_full (round 2,
judge-guided full responses, actors/judge.py) when present. The pairs of one query in five
(by query id) are held out: they measure the policy's chosen-vs-rejected log-prob margin and
accuracy before and after. In the toy domain the stage also measures what PTS is for: the
success rate on held-out questions, before and after.
"""
from __future__ import annotations

import zlib
from pathlib import Path

from actors.train_stages import post_midtrain_model, train_stage
from actors.trainer import TrainJob
from phi4ray import manifest


def _split_pairs(src_dirs: list[Path], train_dir: Path, held_dir: Path) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not src_dirs:
        raise FileNotFoundError("no DPO pair folders (RUN/pts/pairs, RUN/dpo/pairs_full): run `phi4ray pts` first")
    # PTS and judge pairs carry different extra columns: promote to one schema, drop nothing
    tables = [pq.read_table(f) for d in src_dirs for f in sorted(d.glob("*.parquet"))]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    keys = [str(q) for q in (table.column("query_id") if "query_id" in table.column_names
                             else table.column("pair_id")).to_pylist()] if tables else []
    held_mask = [zlib.crc32(k.encode()) % 5 == 0 for k in keys]
    held = table.filter(pa.array(held_mask, pa.bool_())) if keys else table
    train = table.filter(pa.array([not h for h in held_mask], pa.bool_())) if keys else table
    for d, part in ((train_dir, train), (held_dir, held)):
        d.mkdir(parents=True, exist_ok=True)
        if part.num_rows:
            pq.write_table(part, d / "pairs.parquet")
    return train.num_rows, held.num_rows


def evaluate_policy(model_dir: Path, pairs_dir: Path, cfg) -> dict:
    """One load of the model for both figures: the log-prob margin log pi(chosen) - log pi(rejected)
    on held-out pairs (and how often it is > 0), and the success rate on held-out questions."""
    import torch

    from phi4ray.arith import make_problems, success_rate
    from phi4ray.dpo import load_pairs, pair_logps
    from phi4ray.hf import import_hf
    from phi4ray.tokenizer import PAD

    model = import_hf(model_dir, device="cpu", dtype=torch.float32).eval()
    out = {"success": success_rate(model, make_problems(cfg.sft.heldout, cfg.seed, cfg.arith, split="test"),
                                   samples=4, seed=cfg.seed)}
    if list(pairs_dir.glob("*.parquet")):
        with torch.no_grad():
            c, r = pair_logps(model, load_pairs(str(pairs_dir), need_ref=False), PAD, "cpu")
        m = c - r
        out.update(margin=m.mean().item(), accuracy=(m > 0).float().mean().item())
    return out


def run_dpo(run_dir: Path, cfg) -> dict:
    from actors.ray_session import ray_session
    from actors.reference import add_reference_logps

    run_dir = Path(run_dir).resolve()
    if manifest.is_complete(run_dir, "dpo", cfg):
        return manifest.read_manifest(run_dir, "dpo")
    base = run_dir / "models" / "sft"
    d = run_dir / "dpo"
    sources = [p for p in (run_dir / "pts" / "pairs", d / "pairs_full") if p.is_dir()]
    n_train, n_held = _split_pairs(sources, d / "train", d / "heldout")
    if n_train < cfg.dpo.train.batch_size:
        # PTS keeping no query is an outcome, not a crash (an undertrained policy is never in
        # 0.2..0.8): say so loudly, record it, and leave RUN/models/sft as the newest model
        reason = (f"{n_train} training pairs, fewer than one batch (dpo.train.batch_size="
                  f"{cfg.dpo.train.batch_size}); search more queries (pts.queries) or train SFT longer")
        print(f"dpo: SKIPPED: {reason}")
        manifest.write_manifest(run_dir, "dpo", cfg, inputs={"pairs": [str(s) for s in sources]},
                                outputs={"skipped": reason}, counts={"train_pairs": n_train, "heldout_pairs": n_held},
                                timings={})
        return manifest.read_manifest(run_dir, "dpo")
    import shutil

    shutil.rmtree(d / "train_ref", ignore_errors=True)  # Ray Data adds files to a folder: start clean
    with ray_session(min_cpus=4):
        add_reference_logps(d / "train", base, d / "train_ref")
    before = evaluate_policy(base, d / "heldout", cfg)
    job = TrainJob("dpo", post_midtrain_model(cfg), cfg.dpo.train, str(d / "train_ref"), str(run_dir),
                   init_from=str(base), dpo=cfg.dpo)

    def evaluate() -> dict:
        after = evaluate_policy(run_dir / "models" / "dpo", d / "heldout", cfg)
        print(f"dpo: held-out pair margin {before.get('margin')} -> {after.get('margin')}, "
              f"accuracy {before.get('accuracy')} -> {after.get('accuracy')}; "
              f"held-out success {before['success']:.3f} -> {after['success']:.3f}")
        return {"train_pairs": n_train, "heldout_pairs": n_held,
                "heldout_margin_before": before.get("margin"), "heldout_margin_after": after.get("margin"),
                "heldout_pair_accuracy_before": before.get("accuracy"),
                "heldout_pair_accuracy_after": after.get("accuracy"),
                "heldout_success_before": before["success"], "heldout_success_after": after["success"]}

    return train_stage(run_dir, cfg, "dpo", job, {"pairs": [str(s) for s in sources], "init_from": str(base)},
                       evaluate)
