"""A small built-in organic corpus for the tiny preset when a run has no curated data yet.

No network: it reads text any Debian + Python machine already has.
- `code`: the Python standard library's own `.py` files (`sysconfig.get_paths()["stdlib"]`).
- `web`: English prose: the licence texts in /usr/share/common-licenses (where present) and the
  docstrings of standard-library modules (`ast.get_docstring` on the module, its classes and
  functions, joined). Docstrings come from other files than the `code` documents, so the two
  sources do not repeat each other's text.
Files are picked evenly across the sorted file list, so a small sample spans many packages, and the
same machine always gives the same documents. Unreadable or unparsable files are skipped.
"""
from __future__ import annotations

import ast
import json
import sysconfig
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LICENSES_DIR = Path("/usr/share/common-licenses")
MAX_FILE_BYTES = 256 * 1024  # a few generated tables in the stdlib are huge and not very codelike
MIN_PROSE_CHARS = 200


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if "site-packages" not in p.parts and "__pycache__" not in p.parts and p.is_file())


def spread(items: list, k: int) -> list:
    """k items evenly spaced over the list (all of them when k >= len)."""
    if k >= len(items):
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _docstrings(source: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old escape sequences in some modules
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return None
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    parts = [d for d in (ast.get_docstring(n) for n in nodes) if d]
    text = "\n\n".join(parts)
    return text if len(text) >= MIN_PROSE_CHARS else None


def _take(candidates, max_docs: int, source: str, make) -> list[dict]:
    docs = []
    for path, rel in candidates:
        if len(docs) >= max_docs:
            break
        text = make(path)
        if text and text.strip():
            docs.append({"text": text, "id": f"{source}/{rel}", "source": source, "path": str(path)})
    return docs


def builtin_sources(max_docs_per_source: int = 200) -> dict[str, list[dict]]:
    """{"code": [...], "web": [...]} documents ({text, id, source, path}); a source with nothing to
    read on this machine is left out."""
    if max_docs_per_source < 1:
        raise ValueError(f"max_docs_per_source={max_docs_per_source!r} must be >= 1")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [(p, p.relative_to(root).as_posix()) for p in stdlib_files()]
    code_files, prose_files = files[0::2], files[1::2]
    # oversample the candidate list: some files are skipped (too big, no docstrings)
    code = _take(spread(code_files, 2 * max_docs_per_source), max_docs_per_source, "code", _read)

    licenses = []
    if LICENSES_DIR.is_dir():
        seen = set()
        for p in sorted(LICENSES_DIR.iterdir()):
            real = p.resolve()  # GPL -> GPL-3 and friends: one document each
            if real not in seen and real.is_file():
                seen.add(real)
                licenses.append((real, f"licenses/{p.name}"))
    web = _take(licenses, max_docs_per_source, "web", _read)
    web += _take(spread(prose_files, 4 * max_docs_per_source), max_docs_per_source - len(web), "web",
                 lambda p: (_docstrings(src) if (src := _read(p)) else None))
    return {name: docs for name, docs in (("code", code), ("web", web)) if docs}


def write_builtin_corpus(out_dir: str | Path, max_docs_per_source: int = 200) -> dict[str, Path]:
    """Write each built-in source as `out_dir/<source>/part-00000.parquet` (columns text, id, source,
    path); returns {source: folder}. A folder already written with the same size is reused."""
    out = Path(out_dir)
    marker = out / "_SUCCESS.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("max_docs_per_source") == max_docs_per_source:
            return {name: out / name for name in done["sources"]}
    counts = {}
    for name, docs in builtin_sources(max_docs_per_source).items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({k: pa.array([d[k] for d in docs], pa.string()) for k in ("text", "id", "source", "path")})
        tmp = folder / "part-00000.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(folder / "part-00000.parquet")
        counts[name] = len(docs)
    marker.write_text(json.dumps({"max_docs_per_source": max_docs_per_source, "sources": counts}))
    return {name: out / name for name in counts}
