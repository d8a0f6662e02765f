"""Text that exercises a byte-level BPE: code, many scripts, emoji, whitespace, special tokens."""
from __future__ import annotations

import inspect
import json
import re
import textwrap

SAMPLES = [
    "Hello, world!",
    "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }\r\n",
    "Ünïcödé façade naïve coöperate — “quotes” ‘single’ «guillemets»",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "敏捷的棕色狐狸跳过了懒狗。日本語のテキストも含まれます。한국어 문장도 있습니다.",
    "العربية: الثعلب البني السريع يقفز فوق الكلب الكسول",
    "עברית: השועל החום המהיר קופץ מעל הכלב העצלן",
    "हिन्दी: तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है। தமிழ் ภาษาไทย ქართული",
    "emoji: 🙂👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️‍🔥 🤖 \U0001F9EA",
    "      leading spaces, trailing spaces      ",
    "tabs\t\tand\n\n\n\nnewlines \r\n\r\n mixed   \t \n",
    "<|im_start|>user<|im_sep|>What is 2+2?<|im_end|><|im_start|>assistant<|im_sep|>4<|im_end|>",
    "<|endoftext|><|fim_prefix|>def <|fim_suffix|>pass<|fim_middle|><|dummy_0|><|dummy_87|><|endofprompt|>",
    "not special: <|im_start <im_end|> <|unknown|> |im_end|",
    "numbers 1234567890 3.14159 1e-10 0xDEADBEEF 1,000,000 ½ ⅓ ² ③",
    "I'm you're he'll they've we'd IT'S DON'T",
    "$\\frac{a}{b} + \\sqrt{x^2+y^2} = \\int_0^\\infty e^{-x}\\,dx$",
    "\x00\x01\x7f control \u200b zero-width \ufeff bom \u00ad soft-hyphen",
    "",
    " ",
    "\n",
]


def python_sources(limit: int = 5) -> list[str]:
    """Real code from the standard library (present on any Python install)."""
    mods = [json, textwrap, inspect]
    return [inspect.getsource(m)[:20_000] for m in mods[:limit]]


def chunks(text: str, lo: int = 600, hi: int = 2000) -> list[str]:
    """Consecutive paragraphs gathered into documents of lo..hi characters."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= lo:
            out.append(cur[:hi])
            cur = ""
    return out
