"""The pipeline's stages in recipe order (DESIGN.md). Each `run` imports its Ray side lazily, so
`phi4ray --help` and config checks never start Ray."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phi4ray.presets import RunConfig


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    run: Callable[[Path, RunConfig], dict]


def _init(run_dir: Path, cfg: RunConfig) -> dict:
    from phi4ray.init_model import run_init

    return run_init(run_dir, cfg)


def _serve(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.serve_stage import run_serve  # Ray and vLLM load only when serving

    return run_serve(run_dir, cfg)


def _curate(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.curate import run_curate  # Ray loads only when curating

    return run_curate(run_dir, cfg)


def _synthesize(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.synthesize import run_synthesize  # Ray and vLLM load only when synthesizing

    return run_synthesize(run_dir, cfg)


def _tokenize(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.tokenize import mixture_for_run, run_tokenize  # Ray loads only when tokenizing

    d = cfg.data
    mix = mixture_for_run(run_dir, seq_len=d.seq_len, seed=cfg.seed, shard_sequences=d.shard_sequences,
                          total_tokens=d.total_tokens, builtin_max_docs=d.builtin_max_docs)
    return run_tokenize(run_dir, mix)


def _pretrain(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.train_stages import run_pretrain

    return run_pretrain(run_dir, cfg)


def _midtrain(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.train_stages import run_midtrain

    return run_midtrain(run_dir, cfg)


def _sft(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.sft_stage import run_sft

    return run_sft(run_dir, cfg)


def _pts(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.pts import run_pts

    return run_pts(run_dir, cfg)


def _dpo(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.dpo_stage import run_dpo

    return run_dpo(run_dir, cfg)


def _eval(run_dir: Path, cfg: RunConfig) -> dict:
    from actors.eval_stage import run_eval

    return run_eval(run_dir, cfg)


STAGES: list[Stage] = [
    Stage("init", "tokenizer + freshly initialised model of the preset, exported in HF layout", _init),
    Stage("curate", "organic data on Ray Data: extraction, corruption filters, language ID, dedup, quality, decontamination", _curate),
    Stage("synthesize", "synthetic data: rewrites, self-revision, instruction reversal, sandboxed code, plurality filter", _synthesize),
    Stage("tokenize", "tokenize and pack the weighted source mixture into token shards (Ray Data)", _tokenize),
    Stage("pretrain", "FSDP2 pretraining on Ray Train (4K context in the report)", _pretrain),
    Stage("midtrain", "long-context midtraining: context x4, RoPE base 250K, 30% long / 70% recall", _midtrain),
    Stage("sft", "supervised fine-tuning in the Phi-4 chat format, loss on assistant tokens only", _sft),
    Stage("pts", "Pivotal Token Search against the Serve samplers -> token-level DPO pairs", _pts),
    Stage("dpo", "DPO on PTS pairs and judge-guided full pairs (reference log-probs precomputed)", _dpo),
    Stage("eval", "verifiable suites (math, choice, code, IFEval) against each stage's model on the endpoint", _eval),
    Stage("serve", "Ray Serve + vLLM sampler fleet, OpenAI-compatible endpoint with autoscaling", _serve),
]
BY_NAME = {s.name: s for s in STAGES}
