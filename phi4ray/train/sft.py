"""Stage 6's library half: conversations -> packed SFT rows, and best-of-N selection by a judge.

Packed rows have the pretraining layout (phi4ray.data.packing: `tokens` of seq_len + 1, `doc_ids`)
plus `loss_mask`:
- each conversation is one document (its own doc id), so attention never crosses conversations
  and positions restart at each one;
- loss_mask is 1 on assistant content and its closing <|im_end|> (Phi4Tokenizer.render_chat),
  0 on system/user turns, role headers and padding;
- conversations are packed whole, first-fit in input order (deterministic), never split across
  rows; a row's unused tail is padding in a document of its own with loss_mask 0;
- a conversation longer than a row is not truncated (that would train on a cut-off answer):
  it is set aside with its length, and conversations_in = packed + too_long.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from phi4ray.model.hf import import_hf
from phi4ray.model.tokenizer import ChatTokens, load_tokenizer
from phi4ray.run.errors import ConfigError
from phi4ray.toy.arith import make_problems, sft_conversation
from phi4ray.train.step import TrainConfig, loss_fn


@dataclass
class PackedSFT:
    tokens: np.ndarray      # (rows, seq_len + 1) int32
    doc_ids: np.ndarray     # (rows, seq_len + 1) int32
    loss_mask: np.ndarray   # (rows, seq_len + 1) int8
    too_long: list[tuple[int, int]] = field(default_factory=list)  # (conversation index, length)
    pad_tokens: int = 0

    @property
    def stats(self) -> dict:
        return {"rows": len(self.tokens), "conversations_too_long": len(self.too_long),
                "trained_tokens": int(self.loss_mask[:, 1:].sum()),
                "pad_fraction": self.pad_tokens / max(1, self.tokens.size)}


def pack_conversations(convs: list[ChatTokens], seq_len: int, pad_id: int) -> PackedSFT:
    width = seq_len + 1
    rows: list[list[ChatTokens]] = []
    fill: list[int] = []
    too_long = []
    for i, c in enumerate(convs):
        n = len(c.ids)
        if n > width:
            too_long.append((i, n))
            continue
        for r, used in enumerate(fill):  # first fit: a short answer fills an earlier row's gap
            if used + n <= width:
                rows[r].append(c)
                fill[r] += n
                break
        else:
            rows.append([c])
            fill.append(n)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int32)
    doc_ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int8)
    for r, row in enumerate(rows):
        pos = 0
        for d, c in enumerate(row):
            n = len(c.ids)
            tokens[r, pos:pos + n] = c.ids
            doc_ids[r, pos:pos + n] = d
            mask[r, pos:pos + n] = c.loss_mask
            pos += n
        doc_ids[r, pos:] = len(row)  # padding: a document of its own, never attended to by data
    return PackedSFT(tokens, doc_ids, mask, too_long, pad_tokens=sum(width - f for f in fill))


@dataclass(frozen=True)
class SFTConfig:
    """SFT data and schedule. `data` names a JSONL or Parquet file of conversations (a `messages`
    column of [{"role", "content"}] lists); empty, the stage uses the toy arithmetic domain
    (phi4ray.toy.arith), whose worked solutions are what a teacher would write."""
    data: str = ""
    problems: int = 2000              # toy domain: training conversations
    heldout: int = 64                 # conversations held out for the before/after loss
    train: TrainConfig = TrainConfig(seq_len=128, batch_size=8, micro_batch_size=4, steps=100, lr=3e-3,
                                     warmup_steps=10, checkpoint_every=50, log_every=10)
    # best-of-N (the report's SFT data: several responses, the judge keeps the best): > 0 = the
    # model SFT starts from answers `best_of_n_prompts` prompts N times each on the fleet, its
    # judge (dpo.judge_url's endpoint, else itself) ranks them, the prompt's oracle rules out
    # wrong ones, and the best join the training conversations. Prompts: the first rows of
    # `best_of_n_file` (a query file, as pts.queries_file), else toy-domain training questions
    best_of_n: int = 0
    best_of_n_prompts: int = 64
    best_of_n_file: str = ""
    best_of_n_max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.problems < 1 or self.heldout < 1:
            raise ConfigError(f"sft.problems={self.problems} and sft.heldout={self.heldout} must be >= 1")
        if self.best_of_n < 0 or self.best_of_n == 1:
            raise ConfigError(f"sft.best_of_n={self.best_of_n} must be 0 (off) or >= 2 (a best of one is no choice)")
        if self.best_of_n_prompts < 1 or self.best_of_n_max_tokens < 1:
            raise ConfigError(f"sft.best_of_n_prompts={self.best_of_n_prompts} and sft.best_of_n_max_tokens="
                              f"{self.best_of_n_max_tokens} must be >= 1")


def read_conversations(path: str) -> list[list[dict]]:
    """Conversations from JSONL (one {"messages": [...]} per line) or Parquet (`messages` column).
    A malformed line raises naming the file and line: SFT data is small and curated, so a bad
    record is a bug upstream, not noise to skip."""
    p = Path(path)
    if p.suffix == ".parquet" or p.is_dir():
        rows = pq.read_table(p).column("messages").to_pylist()
        where = [f"{p} row {i}" for i in range(len(rows))]
    else:
        rows, where = [], []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line)["messages"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{p}:{n}: not a {{\"messages\": [...]}} object ({e})") from None
                where.append(f"{p}:{n}")
    for w, msgs in zip(where, rows):
        if not isinstance(msgs, list) or not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
            raise ValueError(f"{w}: a conversation needs a list of messages with an assistant turn")
    return rows


def heldout_loss(model, convs: list[ChatTokens], seq_len: int, pad_id: int, micro: int = 8) -> float:
    """Mean loss per assistant token on conversations the model did not train on."""
    packed = pack_conversations(convs, seq_len, pad_id)
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(packed.tokens), micro):
            t, d, m = (torch.from_numpy(a[i:i + micro]).long().to(device)
                       for a in (packed.tokens, packed.doc_ids, packed.loss_mask))
            s, k = loss_fn(model, t, d, m)
            total, n = total + s.item(), n + k
    return total / max(1, n)


# --- the sft stage's data ----------------------------------------------------------------------------
def sft_conversations(cfg) -> tuple[list, list, str]:
    """(train, held-out, source name) for a RunConfig: `sft.data`'s conversations, or the toy
    arithmetic domain's worked solutions. Held-out conversations never appear in training."""
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


def write_sft_rows(packed: PackedSFT, out_dir: Path) -> None:
    """RUN/sft_tokens/shard_00000.parquet: tokens, doc_ids and loss_mask rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = {"tokens": packed.tokens, "doc_ids": packed.doc_ids, "loss_mask": packed.loss_mask}
    pq.write_table(pa.table({k: pa.array(list(v)) for k, v in cols.items()}), out_dir / "shard_00000.parquet")


def model_heldout_loss(model_dir: str | Path, convs: list[ChatTokens], seq_len: int, device: str = "cpu") -> float:
    """`heldout_loss` of the HF model in `model_dir` on `device` (bf16 on a GPU). The sft stage
    runs it on a Ray worker (actors/run/off_driver.py)."""
    model = import_hf(model_dir, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    return heldout_loss(model, convs, seq_len, load_tokenizer(model_dir).pad_id)
