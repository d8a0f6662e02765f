"""What a training stage runs (`TrainJob`), the jobs of the pipeline's training stages, and when a
stage's checkpoints may be resumed.

A job is plain data: the model config, the `TrainConfig`, the packed rows (or DPO pairs) and the
model it starts from. actors/train/trainer.py runs it on Ray Train; everything here works without Ray.

Checkpoints are never deleted. A rerun of a stage resumes from its last checkpoint when the
checkpoint still describes the same training, only cut at another length (`resume_key`); when it
does not, the old checkpoints and metrics are moved aside to `<stage>.stale-<time>` siblings
(`prepare_checkpoints`) and the stage starts fresh.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

from phi4ray.data.token_shards import RECORD
from phi4ray.model.config import ModelConfig
from phi4ray.run.console import say
from phi4ray.run.errors import ConfigError
from phi4ray.run.paths import is_model_dir, model_dir
from phi4ray.train.dpo import DPOConfig
from phi4ray.train.step import TrainConfig

STAGES = ("pretrain", "midtrain", "sft", "dpo", "dpo2")
MARKER = "phi4ray_job.json"


@dataclasses.dataclass(frozen=True)
class TrainJob:
    stage: str                      # one of STAGES
    model: ModelConfig
    train: TrainConfig
    tokens_dir: str                 # packed Parquet rows (phi4ray.data.packing / phi4ray.train.sft), or DPO pairs
    run_dir: str
    init_from: str | None = None    # HF folder to start from (the previous stage's model)
    loss_mask: bool = False         # rows carry a loss_mask column (SFT: assistant tokens only)
    dpo: DPOConfig | None = None    # set: the objective is DPO over pairs with stored reference log-probs
    # the folder whose content identifies the rows (None: tokens_dir). DPO: the pairs before the
    # reference pass, whose output files Ray Data names and orders differently on every run
    data_from: str | None = None
    # fault injection for resume tests: raise once when this step is reached (a marker file in
    # the stage dir makes it one-shot across restarts)
    fail_once_at_step: int | None = None

    @property
    def ray_train_dir(self) -> Path:
        return Path(self.run_dir).resolve() / "ray_train" / self.stage

    @property
    def metrics_dir(self) -> Path:
        return Path(self.run_dir).resolve() / "checkpoints" / self.stage


# --- the pipeline's training jobs -----------------------------------------------------------------
def post_midtrain_model(cfg) -> ModelConfig:
    """The model config from midtraining on (SFT and DPO keep midtraining's RoPE base)."""
    return cfg.model.replace(rope_theta=cfg.midtrain.rope_theta)


def midtrain_seq_len(cfg) -> int:
    return cfg.data.seq_len * cfg.midtrain.context_multiplier


def pretrain_job(run_dir: str | Path, cfg) -> TrainJob:
    run_dir = Path(run_dir)
    tc = dataclasses.replace(cfg.pretrain, seq_len=cfg.data.seq_len)  # the packed rows decide it
    return TrainJob("pretrain", cfg.model, tc, str(run_dir / "tokens"), str(run_dir),
                    init_from=str(run_dir / "models" / "init"))


def midtrain_job(run_dir: str | Path, cfg) -> TrainJob:
    """Same weights as pretraining's, longer context and a new RoPE base, on RUN/tokens_midtrain."""
    run_dir = Path(run_dir)
    tc = dataclasses.replace(cfg.midtrain.train, seq_len=midtrain_seq_len(cfg))
    return TrainJob("midtrain", post_midtrain_model(cfg), tc, str(run_dir / "tokens_midtrain"), str(run_dir),
                    init_from=str(run_dir / "models" / "pretrain"))


# --- when a checkpoint may be resumed --------------------------------------------------------------
# TrainConfig fields that say how long and on what schedule to train, not what a step is: a
# checkpoint made under other values is still a state of this same training (raise `steps` and
# the stage trains on from its last checkpoint; the lr schedule follows the new values from there).
# grad_clip, micro-batching, activation checkpointing, compile and the compute dtype change how a
# step is computed, not which rows it sees or the state it updates.
# Not here, so a change starts fresh: seq_len and batch_size (which rows make a step, and the
# data position stored in the checkpoint), seed (row order), and weight_decay / beta1 / beta2,
# which the checkpoint's optimizer state carries and would silently override on resume.
SCHEDULE_FIELDS = ("steps", "lr", "min_lr_ratio", "warmup_steps", "checkpoint_every", "log_every",
                   "grad_clip", "micro_batch_size", "activation_checkpointing", "compile", "dtype", "max_failures")


def folder_fingerprint(folder: str | Path | None, pattern: str = "*") -> str | None:
    """sha256 over the relative names and bytes of the files under `folder` matching `pattern`:
    the same rows rewritten keep their fingerprint, other rows under the same names do not."""
    if folder is None:
        return None
    root = Path(folder)
    if not root.exists():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob(pattern) if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def data_fingerprint(folder: str | Path) -> str | None:
    """The rows a stage trains on. Packed pretraining rows come with the record tokenize wrote
    beside them, whose key names the mixture and each input file (path, size, mtime): O(1) however
    large the corpus, where hashing the rows would read terabytes. Post-training rows (SFT
    conversations, DPO pairs) have no record and are hashed whole: they are a post-training set's
    size, and the stage rewrites them on every run, so only their content can say they are the same."""
    record = Path(folder) / RECORD
    if record.is_file():
        return "record:" + json.loads(record.read_text())["key"]
    return folder_fingerprint(folder, "*.parquet")


def model_fingerprint(folder: str | Path | None) -> str | None:
    """A starting model folder by its files' names, sizes and modification times: a few dozen
    files whose bytes (tens of GB at 14B) are never read; a re-export is another model."""
    if folder is None:
        return None
    root = Path(folder)
    if not root.exists():
        return "missing"
    files = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def resume_key(job: TrainJob) -> dict:
    """What a checkpoint of `job` must share with the job resuming from it: the model's shape, the
    stage's objective, the data (the rows' content) and the starting model (its weights).
    Everything but `SCHEDULE_FIELDS`; fault injection is not part of the training either."""
    train = {k: v for k, v in dataclasses.asdict(job.train).items() if k not in SCHEDULE_FIELDS}
    dpo = None
    if job.dpo is not None:  # its `train` is job.train (above); the judge fields only make the pairs
        dpo = {k: v for k, v in dataclasses.asdict(job.dpo).items()
               if k != "train" and not k.startswith("judge_")}
    return {"stage": job.stage, "model": dataclasses.asdict(job.model), "train": train,
            "loss_mask": job.loss_mask, "dpo": dpo,
            "data": data_fingerprint(job.data_from or job.tokens_dir),
            "init_from": model_fingerprint(job.init_from)}


def last_checkpoint_step(ckpts: Path) -> int | None:
    steps = [int(p.name.split("_")[1]) for p in ckpts.glob("step_*") if p.name.split("_")[1].isdigit()]
    return max(steps) if steps else None


def stale_reason(job: TrainJob, key: str) -> str | None:
    """Why the stage's existing checkpoints must not be resumed by `job` (None: resume them)."""
    ckpts = job.ray_train_dir
    if not ckpts.exists() and not job.metrics_dir.exists():
        return None
    marker = ckpts / MARKER
    if not marker.exists():
        return "made by an unknown job" if ckpts.exists() and any(ckpts.iterdir()) else None
    if marker.read_text() != key:
        old = json.loads(marker.read_text())
        new = json.loads(key)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f"made under another {', '.join(changed)}"
    last = last_checkpoint_step(ckpts)
    if last is not None and last > job.train.steps:
        # the stage cannot untrain: resuming would export the step-`last` model as this stage's
        return f"last checkpoint at step {last}, past train.steps={job.train.steps}"
    return None


def move_aside(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    dest = path.with_name(f"{path.name}.stale-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.stale-{stamp}-{n}")
    shutil.move(str(path), str(dest))
    return dest


def prepare_checkpoints(job: TrainJob) -> list[Path]:
    """Before training: keep the stage's checkpoints when `job` may resume them, else move them and
    the stage's metrics aside (RUN/ray_train/<stage>, RUN/checkpoints/<stage> ->
    `<stage>.stale-<time>`). Records the job's resume key next to the checkpoints; returns the
    folders moved aside."""
    key = json.dumps(resume_key(job), sort_keys=True, default=str)
    reason = stale_reason(job, key)
    moved = []
    if reason:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = [d for d in (move_aside(job.ray_train_dir, stamp), move_aside(job.metrics_dir, stamp)) if d]
        say(f"{job.stage}: checkpoints {reason}; starting fresh, old ones moved aside to "
              f"{', '.join(map(str, moved))}")
    job.ray_train_dir.mkdir(parents=True, exist_ok=True)
    (job.ray_train_dir / MARKER).write_text(key)
    return moved


def sft_job(run_dir: str | Path, cfg) -> TrainJob:
    """From the run's newest model before SFT (RUN/models/midtrain; RUN/models/init where the run
    imported a pretrained model and skips pre- and midtraining) on RUN/sft_tokens, the loss on
    assistant tokens only."""
    run_dir = Path(run_dir)
    start = next((model_dir(run_dir, s) for s in ("midtrain", "pretrain") if is_model_dir(model_dir(run_dir, s))),
                 model_dir(run_dir, "init"))
    return TrainJob("sft", post_midtrain_model(cfg), cfg.sft.train, str(run_dir / "sft_tokens"), str(run_dir),
                    init_from=str(start), loss_mask=True)


def dpo_job(run_dir: str | Path, cfg, stage: str = "dpo", init_from: str | Path | None = None) -> TrainJob:
    """DPO round 1 (`dpo`, from RUN/models/sft) or round 2 (`dpo2`, from `init_from`: the round-1
    model) on RUN/<stage>/train_ref (the training pairs with the reference log-probs); the rows
    are identified by RUN/<stage>/train, the pairs before the reference pass."""
    run_dir = Path(run_dir)
    d = run_dir / stage
    return TrainJob(stage, post_midtrain_model(cfg), cfg.dpo.train, str(d / "train_ref"), str(run_dir),
                    init_from=str(init_from or run_dir / "models" / "sft"), dpo=cfg.dpo, data_from=str(d / "train"))


def worker_split_check(section: str):
    """A training stage's `check`: every worker count the stage may run at (train_workers, or any
    count of an elastic range, which the autoscaler chooses) must get at least one row of the
    batch; refused before any worker starts. Uneven shares are fine (`TrainConfig.micro_steps`)."""
    def check(cfg, run_dir, options) -> None:
        train = cfg
        for part in section.split("."):
            train = getattr(train, part)
        try:
            train.micro_steps(cfg.train_workers)
        except ConfigError as e:
            raise ConfigError(f"{section}: {e} (train_workers={cfg.train_workers})") from None
    return check
