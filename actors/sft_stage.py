"""Stage `sft`: conversations -> packed rows with an assistant-only loss mask -> Ray Train.

Data: `sft.data` (JSONL/Parquet conversations, e.g. best-of-N responses kept by the judge,
actors/judge.py) or, by default, the toy arithmetic domain's worked solutions (phi4ray.arith).
Writes RUN/sft_tokens (tokens, doc_ids, loss_mask; one conversation per document, never split),
RUN/models/sft, and a manifest with the held-out loss before and after.
"""
from __future__ import annotations

import random
from pathlib import Path

from actors.train_stages import post_midtrain_model, train_stage
from actors.trainer import TrainJob
from phi4ray import manifest
from phi4ray.presets import RunConfig


def sft_conversations(cfg: RunConfig) -> tuple[list, list, str]:
    """(train, held-out, source name). Held-out conversations never appear in training."""
    from phi4ray.arith import make_problems, sft_conversation
    from phi4ray.sft import read_conversations

    s = cfg.sft
    if s.data:
        convs = read_conversations(s.data)
        random.Random(cfg.seed).shuffle(convs)
        if len(convs) <= s.heldout:
            raise ValueError(f"sft.data={s.data}: {len(convs)} conversations, need more than sft.heldout={s.heldout}")
        return convs[s.heldout:], convs[:s.heldout], s.data
    train = [sft_conversation(p) for p in make_problems(s.problems, cfg.seed, cfg.arith)]
    held = [sft_conversation(p) for p in make_problems(s.heldout, cfg.seed, cfg.arith, split="test")]
    return train, held, "arith"


def _write_rows(packed, out_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = {"tokens": packed.tokens, "doc_ids": packed.doc_ids, "loss_mask": packed.loss_mask}
    pq.write_table(pa.table({k: pa.array(list(v)) for k, v in cols.items()}), out_dir / "shard_00000.parquet")


def _heldout_loss(model_dir: Path, convs, seq_len: int) -> float:
    import torch

    from phi4ray.hf import import_hf
    from phi4ray.sft import heldout_loss
    from phi4ray.tokenizer import PAD

    model = import_hf(model_dir, device="cpu", dtype=torch.float32).eval()
    return heldout_loss(model, convs, seq_len, PAD)


def run_sft(run_dir: Path, cfg: RunConfig) -> dict:
    from phi4ray.sft import pack_conversations
    from phi4ray.tokenizer import PAD, get_tokenizer

    run_dir = Path(run_dir)
    if manifest.is_complete(run_dir, "sft", cfg):
        return manifest.read_manifest(run_dir, "sft")
    tc = cfg.sft.train
    tok = get_tokenizer()
    train, held, source = sft_conversations(cfg)
    packed = pack_conversations([tok.render_chat(c) for c in train], tc.seq_len, PAD)
    if packed.too_long:
        print(f"sft: {len(packed.too_long)} conversations longer than sft.train.seq_len={tc.seq_len} set aside")
    rows_dir = run_dir / "sft_tokens"
    _write_rows(packed, rows_dir)
    held_ids = [tok.render_chat(c) for c in held]
    base = run_dir / "models" / "midtrain"
    before = _heldout_loss(base, held_ids, tc.seq_len)
    job = TrainJob("sft", post_midtrain_model(cfg), tc, str(rows_dir), str(run_dir), init_from=str(base),
                   loss_mask=True)

    def evaluate() -> dict:
        after = _heldout_loss(run_dir / "models" / "sft", held_ids, tc.seq_len)
        print(f"sft: held-out loss per assistant token {before:.3f} -> {after:.3f}")
        return {"conversations": len(train), "conversations_too_long": len(packed.too_long), **packed.stats,
                "heldout_conversations": len(held), "heldout_loss_before": before, "heldout_loss_after": after}

    return train_stage(run_dir, cfg, "sft", job, {"source": source, "init_from": str(base), "rows": str(rows_dir)},
                       evaluate)

