r"""Versioned prompt templates for synthesis, one file each under `templates/`.

Every output row records the `template_id` ("name@version") of the prompt that produced it, so
data made with different wordings is never mixed unknowingly: change a template's wording, bump
its version. `Template.digest` (a hash of the body) lets a run manifest catch an edit that forgot
the bump.

File format (`templates/<name>.txt`):

    id: <name, equal to the file name>
    version: <positive integer>
    purpose: <one line>
    output: <optional: a regex the answer must match, sent as a structured-output guide>
    ---
    <body with {placeholders}>

Placeholders are `{identifier}`; a literal brace is doubled (`\boxed{{answer}}` renders as
`\boxed{answer}`), as in str.format. Any other brace is an error at load time, so a LaTeX
`\frac{1}{2}` left undoubled fails loudly instead of turning into a placeholder. Rendering is one
pass: braces inside a field's value (code, LaTeX in a seed passage) are never read as
placeholders.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TEMPLATE_DIR = Path(__file__).with_name("templates")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)\}|[{}]")
_HEADER = ("id", "version", "purpose")
_OPTIONAL = ("output",)


class TemplateError(ValueError):
    """A template file that cannot be used, or a render call that does not fit its template."""


@dataclass(frozen=True)
class Template:
    name: str
    version: int
    purpose: str
    body: str
    fields: frozenset[str]
    # the form of the answer the step's parser reads, as a regex (phi4ray.serve.guide): the engine
    # is held to it, so a small teacher's answer always parses; "" leaves the answer free
    output: str = ""

    @property
    def id(self) -> str:
        return self.name

    @property
    def guide(self) -> dict | None:
        return {"regex": self.output} if self.output else None

    @property
    def template_id(self) -> str:
        """What every output row records: "name@version"."""
        return f"{self.name}@{self.version}"

    @property
    def digest(self) -> str:
        return hashlib.sha256((self.body + "\0" + self.output).encode()).hexdigest()[:12]

    def render(self, **values: object) -> str:
        """The body with every placeholder filled; a missing or unknown field raises TemplateError
        naming it (an unknown one is a typo that would otherwise leave a field silently empty)."""
        missing, unknown = self.fields - values.keys(), values.keys() - self.fields
        if missing or unknown:
            parts = [f"missing field(s) {sorted(missing)}" if missing else "",
                     f"unknown field(s) {sorted(unknown)}" if unknown else ""]
            raise TemplateError(f"template {self.template_id}: {'; '.join(p for p in parts if p)}"
                                f" (fields: {sorted(self.fields)})")

        def fill(m: re.Match) -> str:
            return str(values[m.group(1)]) if m.group(1) else m.group()[0]

        return _TOKEN.sub(fill, self.body)


def parse_template(text: str, name: str) -> Template:
    """A Template from a file's text; TemplateError naming the problem for a malformed one."""
    head, sep, body = text.partition("\n---\n")
    if not sep:
        raise TemplateError(f"template {name!r}: no '---' line between the header and the body")
    header: dict[str, str] = {}
    for line in head.strip().splitlines():
        key, colon, value = line.partition(":")
        if not colon or key.strip() not in _HEADER + _OPTIONAL:
            raise TemplateError(f"template {name!r}: bad header line {line!r} "
                                f"(expected {', '.join(_HEADER)}, optionally {', '.join(_OPTIONAL)})")
        header[key.strip()] = value.strip()
    if not set(_HEADER) <= set(header):
        raise TemplateError(f"template {name!r}: header lacks {sorted(set(_HEADER) - set(header))}")
    output = header.get("output", "")
    try:
        re.compile(output)
    except re.error as e:
        raise TemplateError(f"template {name!r}: output is not a regex ({e})") from None
    if header["id"] != name:
        raise TemplateError(f"template {name!r}: header id {header['id']!r} differs from the file name")
    if not header["version"].isdigit() or int(header["version"]) < 1:
        raise TemplateError(f"template {name!r}: version must be a positive integer, got {header['version']!r}")
    body = body.strip("\n") + "\n"
    fields = set()
    for m in _TOKEN.finditer(body):
        if m.group() in "{}":
            line = body.count("\n", 0, m.start()) + 1
            raise TemplateError(f"template {name!r}: stray {m.group()!r} on body line {line}; "
                                "double literal braces ({{ and }})")
        if m.group(1):
            fields.add(m.group(1))
    return Template(name, int(header["version"]), header["purpose"], body, frozenset(fields), output)


@lru_cache(maxsize=None)
def load_template(name: str, directory: str | None = None) -> Template:
    """Template `name` from `directory` (default: the packaged templates/)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TemplateError(f"template name {name!r} must match {_NAME.pattern}")
    path = Path(directory) if directory is not None else TEMPLATE_DIR
    path = path / f"{name}.txt"
    if not path.is_file():
        raise TemplateError(f"no template {name!r} ({path} does not exist); known: {', '.join(available_templates(directory))}")
    return parse_template(path.read_text(encoding="utf-8"), name)


def available_templates(directory: str | None = None) -> list[str]:
    root = Path(directory) if directory is not None else TEMPLATE_DIR
    return sorted(p.stem for p in root.glob("*.txt"))


def template_digests(names: list[str] | None = None, directory: str | None = None) -> dict[str, str]:
    """{template_id: digest} for a run manifest: a later run whose digest differs under the same
    template_id had its wording edited without a version bump."""
    return {t.template_id: t.digest
            for t in (load_template(n, directory) for n in (names or available_templates(directory)))}


def strip_label(text: str, *labels: str) -> str:
    """`text` without a leading "Label:" that a model echoed from the answer form a template asked
    for (markdown dressing such as "**Instruction:**" included), stripped of outer whitespace."""
    text = text.strip() if isinstance(text, str) else ""
    for label in labels:
        m = re.match(r"[*#_ \t]*" + re.escape(label) + r"[*_ \t]*:[*_ \t]*\n?", text, re.I)
        if m:
            return text[m.end():].strip()
    return text
