"""Model shapes as small dataclasses, and the presets that name them.

`phi4-14b` is the shape of the Phi-4 report (HF `Phi3ForCausalLM`): 14.66B parameters.
`tiny` trains and samples on a laptop CPU in fp32; `small` is sized for one GPU (MFU runs).
Every other size in the system (FLOPs, KV heads, context) derives from these few numbers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from phi4ray.run.errors import ConfigError

# Vocabulary of the Phi-4 tokenizer: cl100k (100,256 ranks) + specials + dummies, padded to a
# multiple of 128 so the embedding and output matmuls tile well on GPUs.
PHI4_VOCAB_SIZE = 100_352


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 5120
    n_layers: int = 40
    n_heads: int = 40
    n_kv_heads: int = 10
    ffn_dim: int = 17920
    vocab_size: int = PHI4_VOCAB_SIZE
    norm_eps: float = 1e-5
    rope_theta: float = 250_000.0
    max_seq_len: int = 16_384
    tie_embeddings: bool = False
    # token-embedding init std: 1.0 as in torchtitan when untied; a tied matrix is also the
    # output projection, so tied presets use a small std to start near uniform logits
    init_std: float = 0.02
    embed_init_std: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ConfigError(
                f"model.dim={self.dim} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads}"
                " (grouped-query attention shares each KV head across an equal group of query heads)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dim dim/n_heads={self.head_dim} must be even for RoPE")
        if not self.rope_theta > 0:
            raise ConfigError(f"model.rope_theta must be > 0, got {self.rope_theta!r}")
        if not 0 < self.norm_eps < 1:
            raise ConfigError(f"model.norm_eps must be in (0, 1), got {self.norm_eps!r}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # --- sizes -------------------------------------------------------------------------------
    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count, computed from the shapes (matches the module on meta device)."""
        hd = self.head_dim
        attn = self.dim * (self.n_heads * hd + 2 * self.n_kv_heads * hd) + self.n_heads * hd * self.dim
        mlp = 3 * self.dim * self.ffn_dim
        norms = 2 * self.dim
        body = self.n_layers * (attn + mlp + norms) + self.dim  # + final norm
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return body + head + (embed if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix / torchtitan.

        6 * (matmul parameters: everything but the embedding lookup) plus the attention
        score/value matmuls, 12 * layers * dim * seq_len (counted over the full square, the usual
        convention, so MFU figures compare with other systems').
        """
        norm_params = (2 * self.n_layers + 1) * self.dim  # elementwise, not matmuls
        matmul_params = self.num_params(include_embedding=False) - norm_params
        if self.tie_embeddings:  # the tied matrix is still used as the output projection
            matmul_params += self.vocab_size * self.dim
        return 6 * matmul_params + 12 * self.n_layers * self.dim * seq_len


PRESETS: dict[str, ModelConfig] = {
    # The report's shape: phi-3-medium layout (Phi-4 report sec. 2: "closely follows phi-3-medium",
    # full attention over 4K), so pretraining keeps phi-3-medium's RoPE base of 10K; midtraining
    # (sec. 3.3) goes to 16K context and base 250K (`midtrain.rope_theta`, MidtrainConfig).
    "phi4-14b": ModelConfig(rope_theta=10_000.0),
    # One GPU (H100): ~1.6B parameters, head dim 128 like the real model.
    "small": ModelConfig(
        dim=2048, n_layers=24, n_heads=16, n_kv_heads=4, ffn_dim=7168, max_seq_len=4096, rope_theta=10_000.0
    ),
    # SmolLM2-135M-Instruct (HF LlamaForCausalLM), the imported model of the `smol` preset: its
    # shape, so that every stage sizes its work right (stage init refuses a mismatch)
    "smollm2-135m": ModelConfig(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49_152, max_seq_len=8192,
        rope_theta=100_000.0, tie_embeddings=True,
    ),
    # CPU: trains in fp32 on a laptop; head dim 64 is one vLLM's CPU kernels take.
    "tiny": ModelConfig(
        dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=768, max_seq_len=1024,
        rope_theta=10_000.0, tie_embeddings=True, embed_init_std=0.02,
    ),
}


def model_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
