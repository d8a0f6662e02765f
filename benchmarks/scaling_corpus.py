"""A raw corpus of a given size from this machine's own files, for benchmarks/scaling.py.

Three inputs, as curation sees them in the wild (shares of the text bytes):
- prose, 45%: man pages (every language under /usr/share/man, troff stripped roughly) as JSONL;
- html, 35%: HTML pages under /usr/share/doc (python3-doc's, where installed; pages over 1 MB are
  left out: nodejs' all.html repeats the whole API in one page) and the other half of the man
  pages rendered as HTML pages with site chrome, as HTTP responses in WARC files;
- code, 20%: the `.py` files under /usr/lib/python3*/, as a code repository folder.
Files are cut at `file_bytes`, so a larger corpus has more files of the same size (a file is
curation's unit of work). Every list is sorted, then shuffled with a fixed seed: the same machine
always gives the same corpus, and a corpus of size S is a prefix of any larger one.

When a source runs out, it is read again with a salt: in pass c > 0 about a third of each
document's words trade places within the document (seeded by pass and document). The document
keeps its vocabulary (language, stop-word share, word lengths do not move) but loses most of its
5-grams, so MinHash does not take it for a copy of pass 0. Natural near-duplicates (man pages of
one command in several languages, boilerplate man pages, licence pages) stay: dedup has real work,
and the kept counts are reported rather than assumed.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import html
import io
import json
import random
import re
import uuid
from itertools import count
from pathlib import Path
from typing import Callable, Iterator

from phi4ray.data.curate.builtin import MAN_ROOT, man_to_text

SHARES = {"prose": 0.45, "html": 0.35, "code": 0.20}
MAX_HTML_BYTES = 1 << 20
MIN_CHARS = 200  # shorter man pages are `.so` redirects and stubs
SALT_SHARE = 0.33
_TAG = re.compile(r"(<[^>]*>)")
_SPACE = re.compile(r"(\s+)")


def _shuffled(items: list, seed: str) -> list:
    items = sorted(items)
    random.Random(seed).shuffle(items)
    return items


def salt(text: str, cycle: int, doc: str) -> str:
    """`text` with ~SALT_SHARE of its words swapped among themselves; markup (<...>) and
    whitespace stay where they are. Pass 0 is the text itself."""
    if cycle == 0:
        return text
    parts = [p for seg in _TAG.split(text) for p in ([seg] if seg.startswith("<") else _SPACE.split(seg))]
    words = [i for i, p in enumerate(parts) if p and not p.startswith("<") and not p[0].isspace()]
    rng = random.Random(f"{cycle}:{doc}")
    picked = sorted(rng.sample(words, int(len(words) * SALT_SHARE)))
    moved = [parts[i] for i in picked]
    rng.shuffle(moved)
    for i, w in zip(picked, moved):
        parts[i] = w
    return "".join(parts)


def _man_text(path: str) -> str | None:
    try:
        text = man_to_text(gzip.decompress(Path(path).read_bytes()).decode("utf-8", errors="replace"))
    except (OSError, EOFError):
        return None
    return text if len(text) >= MIN_CHARS else None


def man_page_html(name: str, text: str) -> str:
    """A man page as a web page: the text in <p>/<pre> blocks inside navigation and footer chrome."""
    blocks = []
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            tag = "pre" if para.startswith((" ", "\t")) else "p"
            blocks.append(f"<{tag}>{html.escape(para)}</{tag}>")
    title = html.escape(name)
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title} - manual</title></head><body>'
            f'<nav class="menu"><a href="/">Home</a> | <a href="/man/">Manual pages</a> | <a href="/search">Search</a></nav>'
            f'<main><h1>{title}</h1>{"".join(blocks)}</main>'
            f'<footer class="site-footer">Manual pages archive. Generated from {title}. '
            f'<a href="/about">About</a> | <a href="/privacy">Privacy</a></footer></body></html>')


def write_warc(path: Path, pages: list[tuple[str, str]]) -> None:
    """Pages as gzipped WARC response records. Record ids and dates are fixed by the page id (warcio
    would draw random ids and take the clock), so the same corpus is the same bytes."""
    # deferred: warcio is slow to import and only the WARC files need it
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for doc, page in pages:
            rid = uuid.UUID(hashlib.sha256(doc.encode()).hexdigest()[:32])
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                f"http://docs.local/{doc}", "response", payload=io.BytesIO(page.encode()), http_headers=http,
                warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:{rid}>", "WARC-Date": "2025-01-01T00:00:00Z"}))


def _man_id(path: str) -> str:
    rel = Path(path).relative_to(MAN_ROOT)
    return f"{rel.parts[0] if len(rel.parts) > 2 else 'en'}/{rel.name.removesuffix('.gz')}"


def _sources(seed: str) -> dict[str, list[tuple[str, Callable[[], str | None]]]]:
    """{kind: [(doc id, loader)]}, each list in its shuffled order; loaders return None to skip."""
    man = _shuffled(glob.glob(f"{MAN_ROOT}/**/*.gz", recursive=True), f"{seed}:man")
    docs = _shuffled([p for p in glob.glob("/usr/share/doc/**/*.htm*", recursive=True)
                      if Path(p).is_file() and Path(p).stat().st_size <= MAX_HTML_BYTES], f"{seed}:doc")
    code = _shuffled([p for p in glob.glob("/usr/lib/python3*/**/*.py", recursive=True) if Path(p).is_file()],
                     f"{seed}:code")

    def man_html(p):
        text = _man_text(p)
        return man_page_html(_man_id(p), text) if text else None

    def read(p):
        try:
            return Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    pages = [(f"man/{_man_id(p)}", lambda p=p: man_html(p)) for p in man[1::2]]
    pages += [(f"doc/{Path(p).relative_to('/usr/share/doc')}", lambda p=p: read(p)) for p in docs]
    return {
        "prose": [(_man_id(p), lambda p=p: _man_text(p)) for p in man[0::2]],
        "html": _shuffled(pages, f"{seed}:html") if pages else [],
        "code": [(str(Path(p).relative_to("/usr/lib")), lambda p=p: read(p)) for p in code],
    }


def _stream(items: list[tuple[str, Callable]]) -> Iterator[tuple[int, str, str]]:
    """(pass, doc id, text) forever: the items in order, then again salted."""
    for cycle in count():
        found = False
        for doc, load in items:
            text = load()
            if text:
                found = True
                yield cycle, doc, salt(text, cycle, doc)
        if not found:
            raise FileNotFoundError("a corpus source found no readable files on this machine")


class _Sink:
    """One kind's documents into files: JSONL or WARC files of about `file_bytes` each, or one
    code file per document under its pass's own folder (the same path twice is two passes)."""

    def __init__(self, out: Path, kind: str, file_bytes: int):
        self.out, self.kind, self.file_bytes = out, kind, file_bytes
        self.files = self.docs = self.bytes = self.salted = 0
        self.batch: list[tuple[str, str]] = []
        self.batch_bytes = 0

    def add(self, cycle: int, doc: str, text: str) -> None:
        size = len(text.encode())
        self.docs, self.bytes, self.salted = self.docs + 1, self.bytes + size, self.salted + (cycle > 0)
        if self.kind == "code":
            dest = self.out / "code" / f"c{cycle}" / doc
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
            self.files += 1
            return
        self.batch.append((doc if cycle == 0 else f"{doc}~{cycle}", text))
        self.batch_bytes += size
        if self.batch_bytes >= self.file_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        if self.kind == "prose":
            (self.out / "jsonl").mkdir(parents=True, exist_ok=True)
            with open(self.out / "jsonl" / f"part-{self.files:05d}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": t, "url": f"man:{d}"}, ensure_ascii=False) + "\n" for d, t in self.batch)
        else:
            (self.out / "warc").mkdir(parents=True, exist_ok=True)
            write_warc(self.out / "warc" / f"part-{self.files:05d}.warc.gz", self.batch)
        self.files, self.batch, self.batch_bytes = self.files + 1, [], 0


def write_corpus(out: str | Path, total_bytes: int, file_bytes: int = 1 << 20, seed: str = "scaling") -> dict:
    """Write the corpus (about `total_bytes` of document text) under `out`; reuse it when `out`
    already holds one of the same parameters. Returns its summary: `inputs` (curate.inputs entries),
    per kind the files, documents, bytes and salted documents."""
    out = Path(out)
    params = {"total_bytes": total_bytes, "file_bytes": file_bytes, "seed": seed, "shares": SHARES}
    done = out / "corpus.json"
    if done.is_file() and json.loads(done.read_text())["params"] == params:
        return json.loads(done.read_text())
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} holds something else than a corpus of these parameters: remove it first")
    summary = {"params": params, "inputs": [f"web={out / 'jsonl'}", f"web={out / 'warc'}", f"code=code:{out / 'code'}"]}
    for kind, items in _sources(seed).items():
        sink, budget = _Sink(out, kind, file_bytes), int(total_bytes * SHARES[kind])
        for cycle, doc, text in _stream(items):
            if sink.bytes >= budget:
                break
            sink.add(cycle, doc, text)
        sink.flush()
        summary[kind] = {"files": sink.files, "docs": sink.docs, "bytes": sink.bytes, "salted_docs": sink.salted}
    summary["digest"] = _digest(out)
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _digest(out: Path) -> str:
    """sha256 over every file's relative path and bytes: two corpora are the same corpus."""
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "corpus.json":
            h.update(str(p.relative_to(out)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]
