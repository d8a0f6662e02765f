"""An imported model's own tokenizer: its tokenizer.json (HF `tokenizers`) and its chat template.

The chat template is rendered as transformers renders it (a sandboxed jinja environment), but with
each message's content replaced by a marker: the template's own text is encoded with its special
tokens, each content as ordinary text. So a message cannot forge a turn, and the loss mask knows
exactly which ids are assistant content. The mask covers each assistant content and the template
text after it up to and including the end-of-turn token (what the model must learn to emit).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from phi4ray.model.tokenizer_base import ChatTokens, Tokenizer
from phi4ray.run.errors import ConfigError

# the files of a tokenizer in an HF folder (transformers 5 writes the template beside the config)
FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
_MARK = re.compile("\ue000(\\d+)\ue001")  # private-use code points: never in a real template


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, folder: str | os.PathLike) -> None:
        from tokenizers import Tokenizer as Fast  # deferred: only runs from an imported model need it

        d = Path(folder)
        self.folder = d
        if not (d / "tokenizer.json").is_file():
            raise ConfigError(f"{d}: no tokenizer.json (phi4ray reads HF fast tokenizers)")
        try:
            self._tk = Fast.from_file(str(d / "tokenizer.json"))
            self._plain = Fast.from_file(str(d / "tokenizer.json"))
            config = json.loads((d / "tokenizer_config.json").read_text())
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
            raise ConfigError(f"{d}: tokenizer files do not load ({e})") from None
        self._plain.encode_special_tokens = True  # special-token text stays text
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one renders chats
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if not template and (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text()
        if not template:
            raise ConfigError(f"{d}: the tokenizer has no chat template; SFT, PTS, DPO and serving render "
                              "chats with it (an instruct or chat model brings one)")
        self.chat_template = template
        self._specials = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")}
        eos = self._specials["eos_token"]
        if eos is None or self._tk.token_to_id(eos) is None:
            raise ConfigError(f"{d}: eos_token {eos!r} is not in the tokenizer's vocabulary")
        self.end_turn_id = self._tk.token_to_id(eos)
        self.eos_id = self._id("<|endoftext|>", self.end_turn_id)
        self.pad_id = self._id(self._specials["pad_token"], self.end_turn_id)
        self.bos_id = self._id(self._specials["bos_token"], self.end_turn_id)
        self.special_ids = frozenset(i for i, t in self._tk.get_added_tokens_decoder().items() if t.special)
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        self._template = _compile(template)
        self.identity = "hf-" + hashlib.sha1((d / "tokenizer.json").read_bytes()).hexdigest()[:16]

    def _id(self, text: str | None, default: int) -> int:
        i = self._tk.token_to_id(text) if text else None
        return default if i is None else i

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], ordinary: bool = True, num_threads: int = 2) -> list[list[int]]:
        tk = self._plain if ordinary else self._tk
        return [e.ids for e in tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=False)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> ChatTokens:
        contents = []
        marked = []
        for i, m in enumerate(messages):
            role, content = self.check_message(i, m)
            contents.append((role, content))
            marked.append({"role": role, "content": f"\ue000{i}\ue001"})
        text = self._template.render(messages=marked, add_generation_prompt=add_generation_prompt,
                                     **{k: v or "" for k, v in self._specials.items()})
        pieces = _MARK.split(text)  # template, index, template, index, ..., template
        order = [int(x) for x in pieces[1::2]]
        if order != list(range(len(messages))):
            raise ConfigError(f"{self.folder}: the chat template does not place each message's content once "
                              f"and in order (got message order {order}); phi4ray cannot mask its loss")
        ids: list[int] = []
        mask: list[int] = []
        after_assistant = False
        for k, piece in enumerate(pieces):
            if k % 2:  # a message's content
                role, content = contents[int(piece)]
                body = self.encode_ordinary(content)
                after_assistant = role == "assistant"
                ids += body
                mask += [int(after_assistant)] * len(body)
                continue
            part = self.encode(piece)
            trained = [0] * len(part)
            if after_assistant and self.end_turn_id in part:  # the turn's end is the model's to emit
                trained[:part.index(self.end_turn_id) + 1] = [1] * (part.index(self.end_turn_id) + 1)
            ids += part
            mask += trained
            after_assistant = False
        return ChatTokens(ids, mask)

    def save_hf(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (self.folder / name).is_file() and (self.folder / name).resolve() != (out / name).resolve():
                shutil.copyfile(self.folder / name, out / name)
        return out


def _compile(template: str):
    """The template in the environment transformers renders chat templates in."""
    from jinja2.ext import loopcontrols  # deferred: with the HF tokenizer, only for imported models
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ConfigError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)
