"""A small raw corpus for the curate stage when the user names no inputs (the tiny preset).

Raw, not clean: the point is to feed the curation filters the formats and faults of real inputs,
from text every Debian + Python machine has, with no network:
- `web`: pydoc's HTML pages for standard-library modules, stored as HTTP responses in a WARC file
  (the format crawls come in), plus man pages in every language the machine has (`/usr/share/man`,
  e.g. manpages-de/-fr/-ja), as zstd-compressed JSONL. Man pages of one command in several
  languages share their option lists, and English man pages repeat each other's boilerplate:
  language ID and dedup have real work.
- `acquired`: the licence texts in /usr/share/common-licenses (GPL-2/GPL-3/LGPL variants are
  near-duplicates), gzip JSONL.
- `code`: a slice of the standard library's `.py` files copied into a folder, read as a code
  repository.
Files are picked evenly across sorted lists (`corpus.spread`), so the same machine always gives
the same corpus.
"""
from __future__ import annotations

import gzip
import importlib
import io
import json
import pkgutil
import pydoc
import re
import shutil
import sysconfig
import warnings
from pathlib import Path

import zstandard

from phi4ray.data.corpus import LICENSES_DIR, spread, stdlib_files

MAN_ROOT = Path("/usr/share/man")
# troff requests whose arguments are text (headings, fonts); every other request line is markup
_TEXT_MACROS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "TP", "IP", "TH", "Nm", "Nd", "Sh"}
_TROFF_ESCAPES = re.compile(r"\\f[BIRP(0-9]|\\f\[[A-Z]*\]|\\\(..|\\[-&e|^0 ]|\\\*\(..|\\\*.")


def man_to_text(troff: str) -> str:
    """Rough troff -> text: keep the text, drop requests and font escapes. Good enough for ID and
    filters; curated text from real sources would come through a proper renderer."""
    out = []
    for line in troff.splitlines():
        if line.startswith((".", "'")):
            parts = line[1:].split(None, 1)
            if not parts or parts[0] not in _TEXT_MACROS or len(parts) < 2:
                continue
            line = parts[1].replace('"', "")
        out.append(_TROFF_ESCAPES.sub(lambda m: "-" if m.group() == "\\-" else "", line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def man_pages(max_docs: int) -> list[dict]:
    """Man pages of section 1, half in English and half spread over the other languages present."""
    by_lang = {"en": sorted(MAN_ROOT.glob("man1/*.gz"))}
    for d in sorted(MAN_ROOT.glob("*/man1")):
        by_lang[d.parent.name] = sorted(d.glob("*.gz"))
    others = [lang for lang in by_lang if lang != "en"]
    picked = spread(by_lang["en"], max_docs - max_docs // 2)
    for i, lang in enumerate(others):  # the other half, shared evenly (earlier languages get the rest)
        picked += spread(by_lang[lang], max_docs // 2 // len(others) + (i < max_docs // 2 % len(others)))
    rows = []
    for path in picked:
        try:
            text = man_to_text(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))
        except (OSError, EOFError):
            continue
        lang = path.parts[-3] if path.parts[-3] != "man" else "en"
        rows.append({"text": text, "url": f"man:{lang}/{path.name[:-3]}"})
    return rows


def _pydoc_pages(max_docs: int) -> list[tuple[str, str]]:
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.endswith(
        ("python3.11", "python3.12", "python3.13", "python3.10")) and not m.name.startswith("_"))
    pages, html = [], pydoc.HTMLDoc()
    for name in spread(names, max_docs * 2):
        if len(pages) >= max_docs:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                pages.append((name, html.page(pydoc.describe(module), html.document(module, name))))
        except Exception:  # noqa: BLE001 - a module that won't import on this machine is skipped
            continue
    return pages


def write_warc(path: Path, pages: list[tuple[str, str]]) -> None:
    # deferred: warcio is slow to import and only writing the built-in corpus's WARC needs it
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for name, page in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(
                f"http://pydoc.local/{name}.html", "response", payload=io.BytesIO(page.encode()),
                http_headers=headers))


def write_builtin_raw(out: str | Path, max_docs: int) -> tuple[str, ...]:
    """Write the raw corpus under `out` (once; a finished folder is reused) and return the curate
    inputs naming it, as `source=path` entries."""
    out = Path(out)
    inputs = (f"web={out}/web.warc.gz", f"web={out}/man.jsonl.zst", f"acquired={out}/licenses.jsonl.gz",
              f"code=code:{out}/code")
    if (out / "_DONE").is_file():
        return inputs
    shutil.rmtree(out, ignore_errors=True)
    (out / "code").mkdir(parents=True)
    write_warc(out / "web.warc.gz", _pydoc_pages(max_docs))
    lines = "".join(json.dumps(r) + "\n" for r in man_pages(max_docs)).encode()
    (out / "man.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    licenses = sorted(p for p in LICENSES_DIR.glob("*") if p.is_file()) if LICENSES_DIR.is_dir() else []
    with gzip.open(out / "licenses.jsonl.gz", "wt", encoding="utf-8") as f:
        for p in licenses:
            f.write(json.dumps({"text": p.read_text(errors="replace"), "url": f"license:{p.name}"}) + "\n")
    root = Path(sysconfig.get_paths()["stdlib"])
    for src in spread(stdlib_files(), max_docs):
        dst = out / "code" / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    (out / "_DONE").write_text("ok\n")
    return inputs
