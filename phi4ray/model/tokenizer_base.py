"""What every stage needs of a tokenizer: the interface both kinds fill (phi4ray.model.tokenizer
says which kind a model folder holds)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHAT_ROLES = ("system", "user", "assistant")
# tokenizer_config.json key naming the class that reads the folder back (transformers ignores it)
KIND_KEY = "phi4ray_tokenizer"


@dataclass
class ChatTokens:
    ids: list[int]
    loss_mask: list[int]  # 1 on tokens the model is trained to produce (assistant turns)


class Tokenizer:
    """The interface. Ids: `eos_id` ends a pretraining document, `end_turn_id` ends a chat turn (the
    sampler's stop token), `pad_id` fills rows (always masked), `special_ids` are never text."""
    kind: str
    identity: str            # names the exact vocabulary and merges (caches of token ids are keyed by it)
    vocab_size: int          # ids are < vocab_size (the model's embedding may be larger, never smaller)
    eos_id: int
    end_turn_id: int
    pad_id: int
    bos_id: int
    special_ids: frozenset[int]
    chat_template: str

    def encode(self, text: str) -> list[int]:
        """Special-token text becomes the special id (what HF and vLLM do to a prompt)."""
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Special-token text stays text: a document containing "<|im_end|>" cannot inject one."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str], ordinary: bool = True, num_threads: int = 2) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> ChatTokens:
        """The model's chat format; loss on assistant content and its end-of-turn token only.
        Message content is encoded as ordinary text, so a message cannot forge a turn boundary."""
        raise NotImplementedError

    def save_hf(self, out_dir: str | os.PathLike) -> Path:
        """Write the files transformers, vLLM and `load_tokenizer` read back to these same ids."""
        raise NotImplementedError

    # --- shared by both kinds ------------------------------------------------------------------
    def render_prompt(self, question: str) -> list[int]:
        """`question` as one user turn, ready for the assistant's reply (the rendering the judges,
        PTS, evaluation and synthesis on the fleet all use)."""
        return self.render_chat([{"role": "user", "content": question}], add_generation_prompt=True).ids

    def decode_response(self, ids: list[int]) -> str:
        """A sampled response as text: up to its end of turn, special tokens dropped."""
        if self.end_turn_id in ids:
            ids = ids[:ids.index(self.end_turn_id)]
        return self.decode([t for t in ids if t not in self.special_ids])

    @staticmethod
    def check_message(i: int, m: dict) -> tuple[str, str]:
        role, content = m.get("role"), m.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"message {i}: role {role!r} is not one of {CHAT_ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        return role, content
