"""The DPO reference pass on Ray Data: every pair gets the reference model's log-probs of its
chosen and rejected sides once, before training, so the trainer never holds a second model.

`RefLogps` is a callable class for `map_batches`: each actor loads the reference model once and
scores batches of pairs (phi4ray.train.dpo.completion_logps, the same function the trainer uses for
the policy, so policy and reference agree exactly at step 0).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import ray.data
import torch

from phi4ray.model.hf import import_hf
from phi4ray.model.tokenizer import load_tokenizer
from phi4ray.train.dpo import pair_logps


class RefLogps:
    def __init__(self, model_dir: str, micro_batch: int = 16, device: str = "cpu"):
        torch.set_num_threads(1)  # one actor per CPU
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = import_hf(model_dir, device=device, dtype=dtype).eval()
        self.micro, self.device = micro_batch, device
        self.pad_id = load_tokenizer(model_dir).pad_id

    def __call__(self, batch):
        # pyarrow batches in and out: id lists stay plain list<int> columns (numpy batches would
        # come back as Ray's tensor extension type, which readers without Ray cannot decode)
        cols = {k: batch.column(k).to_pylist() for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        chosen, rejected = [], []
        with torch.no_grad():
            for i in range(0, len(cols["prompt_ids"]), self.micro):
                mb = {k: v[i:i + self.micro] for k, v in cols.items()}
                c, r = pair_logps(self.model, mb, self.pad_id, self.device)
                chosen += c.float().cpu().tolist()
                rejected += r.float().cpu().tolist()
        return (batch.append_column("ref_chosen_logp", pa.array(chosen, pa.float32()))
                .append_column("ref_rejected_logp", pa.array(rejected, pa.float32())))


def add_reference_logps(pairs_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                        concurrency: int = 2, batch_size: int = 64, use_gpu: bool = False) -> int:
    """pairs_dir/*.parquet -> out_dir/*.parquet with REF_COLUMNS added; returns the pair count.
    With `use_gpu` each actor holds a GPU and scores in bf16 (the GPU presets)."""
    out = Path(out_dir)
    ds = ray.data.read_parquet(str(Path(pairs_dir).resolve()))
    ds = ds.map_batches(RefLogps, fn_constructor_args=(str(Path(model_dir).resolve()), 16, "cuda" if use_gpu else "cpu"),
                        batch_size=batch_size, batch_format="pyarrow", concurrency=concurrency, num_cpus=1,
                        num_gpus=1 if use_gpu else 0)
    ds.write_parquet(str(out.resolve()))
    return ray.data.read_parquet(str(out.resolve())).count()
