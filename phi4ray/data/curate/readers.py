"""Readers: files (local, memory://, s3://, gs://, ... through fsspec) -> rows of one fixed schema.

`list_inputs` expands paths, directories and globs into `Input`s (uri, format), sorted; files of
unknown type are returned separately so the caller can report them. `read_input` turns one input
into rows (`ROW_SCHEMA`): one row per record read, good or bad. A bad record is not an
exception: it becomes a row with `quarantine` set to the reason and up to `keep_bytes` of the
offending input in `text` (decoded with replacement) for a human to look at. So for every file
read = kept + quarantined. (Failures of the storage itself, e.g. a permission error or a network
outage, do raise: Ray retries the task; they say nothing about the data.)

Formats:
- jsonl: .jsonl/.json/.ndjson, optionally .gz/.zst; one JSON object per line, text in
  `config.text_field`; `record` = line number (1-based, blank lines are not records);
- parquet: text column `config.text_field`; `record` = row index;
- warc: .warc/.warc.gz, read with warcio; HTTP response records with a text/html or text/plain
  payload become rows (`url` = WARC-Target-URI, `record` = WARC-Record-ID, charset from
  Content-Type); other record types (request, metadata, warcinfo, ...) are not documents: they
  are skipped and counted in the optional `stats` counter;
- html: one .html/.htm file (optionally .gz) = one row of raw HTML (content_type "html"; text
  extraction is another module's job);
- code: every file with a known programming-language extension under a folder marked as a code
  repository (a `code:` prefix on the path, or `ReaderConfig(formats=("<path>=code",))`, `curate.reader.formats=<path>=code`);
  `record` = the path inside the repository, `language` = the language.

Decoding: strict UTF-8 first (a leading BOM is dropped); else the declared charset if there is
one (HTTP header or <meta charset>); else UTF-8 with replacement, unless more than
`max_invalid_utf8_frac` of the bytes are invalid: that is not UTF-8 text, and the record is
quarantined "invalid utf-8". Whole files (html, code, WARC payloads) are sniffed first: a NUL
byte or too many control bytes in the first KiB is "binary".
Size: a record over `max_doc_bytes` is quarantined. A JSONL line is scanned to its end but only
its first KiB is kept in memory; an html/code file is size-checked before reading (compressed
ones are read up to the limit and no further).
Memory: `read_input` is a generator over a file read in 1 MiB chunks, so a reader holds one chunk
and one record (at most `max_doc_bytes`; a WARC payload is drained past that without being kept),
or for Parquet one batch of `parquet_batch_rows` rows; never the whole file.
"""
from __future__ import annotations

import codecs
import collections
import functools
import hashlib
import json
import posixpath
import re
import zlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import fsspec
import pyarrow as pa
import zstandard

from phi4ray.run.errors import ConfigError

FORMATS = ("jsonl", "parquet", "warc", "html", "code")
COLUMNS = ("doc_id", "text", "source", "uri", "record", "url", "format", "content_type", "language",
           "quarantine")
ROW_SCHEMA = pa.schema([(c, pa.large_string() if c == "text" else pa.string()) for c in COLUMNS])

# extension (after removing .gz/.zst) -> format, for files outside code repositories
EXTENSION_FORMATS = {
    "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl", "parquet": "parquet", "pq": "parquet",
    "warc": "warc", "html": "html", "htm": "html",
}
COMPRESSIONS = {"gz": "gzip", "zst": "zstd", "zstd": "zstd"}
_COMPRESSIBLE = ("jsonl", "warc", "html", "code")  # parquet compresses inside the file
CODE_LANGUAGES = {
    "py": "python", "pyi": "python", "ipynb": "jupyter", "c": "c", "h": "c", "cc": "c++", "cpp": "c++",
    "cxx": "c++", "hh": "c++", "hpp": "c++", "hxx": "c++", "cu": "cuda", "cuh": "cuda", "cs": "c#",
    "java": "java", "kt": "kotlin", "kts": "kotlin", "scala": "scala", "groovy": "groovy",
    "go": "go", "rs": "rust", "swift": "swift", "m": "objective-c", "mm": "objective-c++",
    "js": "javascript", "mjs": "javascript", "cjs": "javascript", "jsx": "javascript",
    "ts": "typescript", "tsx": "typescript", "php": "php", "rb": "ruby", "pl": "perl", "pm": "perl",
    "lua": "lua", "r": "r", "jl": "julia", "hs": "haskell", "ml": "ocaml", "mli": "ocaml",
    "fs": "f#", "fsx": "f#", "ex": "elixir", "exs": "elixir", "erl": "erlang", "clj": "clojure",
    "dart": "dart", "sql": "sql", "sh": "shell", "bash": "shell", "zsh": "shell", "ps1": "powershell",
    "f90": "fortran", "f95": "fortran", "f03": "fortran", "f": "fortran", "for": "fortran",
    "vb": "visual-basic", "pas": "pascal", "asm": "assembly", "s": "assembly", "zig": "zig",
    "nim": "nim", "v": "verilog", "sv": "systemverilog", "vhd": "vhdl", "vhdl": "vhdl",
    "tex": "tex", "cmake": "cmake", "mk": "makefile", "css": "css", "scss": "scss", "vue": "vue",
    "svelte": "svelte", "proto": "protobuf", "thrift": "thrift", "sol": "solidity", "d": "d",
    "cr": "crystal", "elm": "elm", "purs": "purescript", "rkt": "racket", "scm": "scheme",
    "lisp": "lisp", "el": "emacs-lisp", "vim": "vim", "tcl": "tcl", "awk": "awk", "cob": "cobol",
    "ada": "ada", "adb": "ada", "ads": "ada", "pro": "prolog", "matlab": "matlab",
}
# files recognised by their whole name (no useful extension)
CODE_FILENAMES = {"makefile": "makefile", "gnumakefile": "makefile", "dockerfile": "dockerfile",
                  "cmakelists.txt": "cmake", "rakefile": "ruby", "gemfile": "ruby", "justfile": "just"}

_FORMAT_PREFIX = re.compile(r"^(jsonl|parquet|warc|html|code):(?!//)(.+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
# Bytes that never appear in text: C0 controls except \t \n \v \f \r and ESC, plus DEL.
_NON_TEXT = bytes(b for b in range(256) if b < 32 and b not in b"\t\n\v\f\r\x1b" or b == 127)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
_CHUNK = 1 << 20  # bytes read from storage at a time
_ZSTD_CHUNK = 1 << 16  # compressed bytes per zstd call: bounds one call's output
_TEXT_CT = {"text/html": "html", "application/xhtml+xml": "html", "text/plain": "text"}


@dataclass(frozen=True)
class ReaderConfig:
    text_field: str = "text"  # JSONL key / Parquet column with the document
    url_field: str = "url"  # optional JSONL key / Parquet column copied to `url`
    max_doc_bytes: int = 10 * 2**20
    # above this fraction of undecodable bytes a record is not UTF-8 text (wrong charset, binary)
    max_invalid_utf8_frac: float = 0.01
    # control bytes in the first `sniff_bytes` of a file above this fraction mean binary (random
    # bytes have ~11%; text none, bar the odd ANSI escape, which is allowed)
    max_binary_frac: float = 0.1
    sniff_bytes: int = 1024
    keep_bytes: int = 1024  # of the offending input, kept in a quarantined row's text
    parquet_batch_rows: int = 1024
    # Tables as "key=value" entries, so `curate.reader.formats=/data/repo=code` works from the
    # command line. code_languages / code_filenames change the built-in tables (CODE_LANGUAGES:
    # extension -> language, CODE_FILENAMES: lowercase name -> language); "key=" removes an entry.
    code_languages: tuple[str, ...] = ()
    code_filenames: tuple[str, ...] = ()
    # format override per input path (as passed to list_inputs), e.g. ("/data/repo=code",)
    formats: tuple[str, ...] = ()
    # folders never listed (VCS metadata, caches, vendored packages)
    ignore_dirs: tuple[str, ...] = (".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox")

    @functools.cached_property
    def language_table(self) -> dict[str, str]:
        return _table(CODE_LANGUAGES, self.code_languages, str.partition)

    @functools.cached_property
    def filename_table(self) -> dict[str, str]:
        return _table(CODE_FILENAMES, self.code_filenames, str.partition)

    @functools.cached_property
    def format_table(self) -> dict[str, str]:
        return _table({}, self.formats, str.rpartition)  # a path may hold "=", a format never does

    def __post_init__(self) -> None:
        for name in ("text_field", "url_field"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"reader.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("max_doc_bytes", "sniff_bytes", "keep_bytes", "parquet_batch_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"reader.{name} must be a positive integer, got {v!r}")
        for name in ("max_invalid_utf8_frac", "max_binary_frac"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ConfigError(f"reader.{name} must be a fraction in [0, 1], got {v!r}")
        for name in ("code_languages", "code_filenames", "formats", "ignore_dirs"):
            entries = getattr(self, name)
            if not isinstance(entries, tuple) or not all(isinstance(e, str) for e in entries):
                raise ConfigError(f"reader.{name} must be a tuple of strings, got {entries!r}")
            if name != "ignore_dirs" and not all("=" in e and e.partition("=")[0] for e in entries):
                raise ConfigError(f"reader.{name}: entries are key=value, got {entries!r}")
        for path, fmt in self.format_table.items():
            if fmt not in FORMATS:
                raise ConfigError(f"reader.formats: {path}={fmt} is not one of {FORMATS}")


def _table(base: dict[str, str], entries: tuple[str, ...], split) -> dict[str, str]:
    out = dict(base)
    for entry in entries:
        key, _, value = split(entry, "=")
        if value:
            out[key] = value
        else:
            out.pop(key, None)
    return out


@dataclass(frozen=True)
class Input:
    uri: str  # protocol-qualified (file:///..., memory:///..., s3://...), the same on every run
    format: str
    root: str = ""  # code: the repository folder the record path is relative to


class Listing(NamedTuple):
    inputs: list[Input]
    skipped: list[str]  # uris of files whose type is unknown (not read), sorted


# ---- listing -------------------------------------------------------------------------------------

def _split_name(uri: str) -> tuple[str, str | None]:
    """(lowercase file name without a compression suffix, compression or None)."""
    name = posixpath.basename(uri).lower()
    stem, dot, ext = name.rpartition(".")
    if dot and ext in COMPRESSIONS:
        return stem, COMPRESSIONS[ext]
    return name, None


def _extension(name: str) -> str:
    return name.rpartition(".")[2] if "." in name.lstrip(".") else ""


def code_language(uri: str, config: ReaderConfig) -> str:
    """Programming language of a file in a code repository by name/extension; "" if not code."""
    name = posixpath.basename(uri)
    return config.filename_table.get(name.lower()) or config.language_table.get(_extension(name).lower(), "")


def _file_format(uri: str, forced: str | None, config: ReaderConfig) -> str | None:
    name, compression = _split_name(uri)
    if forced == "code":
        return "code" if code_language(uri, config) else None
    fmt = forced or EXTENSION_FORMATS.get(_extension(name))
    if fmt is None or (compression and fmt not in _COMPRESSIBLE):
        return None
    if fmt == "warc" and compression == "zstd":  # WARC+zstd needs its dictionary frames: not supported
        return None
    return fmt


def list_inputs(paths: list[str], config: ReaderConfig | None = None) -> Listing:
    """Expand files, directories (recursively) and globs into sorted, de-duplicated inputs.
    A path may carry a format prefix ("code:/repos/x", "jsonl:/data/dump.txt") or be named in
    `config.formats`. Unknown file types are skipped and returned in `Listing.skipped`.
    A path that matches nothing raises FileNotFoundError (a typo, not bad data)."""
    config = config or ReaderConfig()
    if isinstance(paths, str):
        paths = [paths]
    inputs: dict[str, Input] = {}
    skipped: set[str] = set()
    for given in paths:
        m = _FORMAT_PREFIX.match(given)
        forced, path = (m[1], m[2]) if m else (None, given)
        forced = forced or config.format_table.get(given) or config.format_table.get(path)
        fs, fs_path = fsspec.core.url_to_fs(path)
        if _GLOB_CHARS.search(fs_path):
            matches = sorted(fs.glob(fs_path))
        elif fs.exists(fs_path):
            matches = [fs_path]
        else:
            matches = []
        if not matches:
            raise FileNotFoundError(f"input {given!r} matches no file or folder")
        for match in matches:
            if fs.isdir(match):
                root = match.rstrip("/")
                files = [f for f in sorted(fs.find(root, withdirs=False))
                         if not set(posixpath.relpath(f, root).split("/")[:-1]) & set(config.ignore_dirs)]
            else:
                root, files = posixpath.dirname(match), [match]
            for f in files:
                uri = fs.unstrip_protocol(f)
                fmt = _file_format(f, forced, config)
                if fmt is None:
                    skipped.add(uri)
                elif uri not in inputs:
                    inputs[uri] = Input(uri, fmt, fs.unstrip_protocol(root) if fmt == "code" else "")
    return Listing(sorted(inputs.values(), key=lambda i: i.uri), sorted(skipped - set(inputs)))


# ---- bytes ---------------------------------------------------------------------------------------

class _Truncated(Exception):
    """A compressed stream (or a WARC record) ended early; `partial` keeps what was pending."""

    def __init__(self, reason: str, partial: bytes = b""):
        super().__init__(reason)
        self.partial = partial


def _byte_chunks(f, compression: str | None) -> Iterator[bytes]:
    """Decompressed chunks of a file. Multi-member gzip and multi-frame zstd are read through;
    a stream cut short raises _Truncated after everything before the cut was yielded; bytes that
    are not the declared compression raise _Truncated too (nothing valid can follow)."""
    if compression is None:
        while chunk := f.read(_CHUNK):
            yield chunk
        return
    if compression == "gzip":
        new, bound = (lambda: zlib.decompressobj(31)), _CHUNK
    else:
        new, bound = zstandard.ZstdDecompressor().decompressobj, None
    d, pending, started = new(), b"", False
    while True:
        if not pending:
            pending = f.read(_CHUNK if bound else _ZSTD_CHUNK)
            if not pending:
                break
        if d.eof:  # one member/frame finished and more bytes follow: the next member
            if not pending.strip(b"\x00"):  # zero padding after the last member (tape/block tools)
                pending = b""
                continue
            d = new()
        started = True
        try:
            if bound:
                out = d.decompress(pending, bound)  # bounded: a gzip bomb never lands in memory whole
                pending = d.unused_data if d.eof else d.unconsumed_tail
            else:
                out = d.decompress(pending)
                pending = d.unused_data if d.eof else b""
        except Exception as e:  # zlib.error, ZstdError: not (or no longer) the declared format
            raise _Truncated(f"corrupt {compression} stream: {e}") from None
        if out:
            yield out
    if started and not d.eof:
        raise _Truncated(f"truncated {compression} stream")


class _ChunkReader:
    """A read()-only file object over decompressed chunks, for warcio. A cut in the stream is
    raised only once the bytes before it have been read, so the records before it survive."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buf, self._error = chunks, b"", None
        self.total = 0  # bytes produced so far

    def _fill(self, enough) -> None:
        while not enough() and self._chunks is not None:
            try:
                chunk = next(self._chunks, None)
            except _Truncated as e:
                chunk, self._error = None, e
            if chunk is None:
                self._chunks = None
            else:
                self._buf += chunk
                self.total += len(chunk)
        if not self._buf and self._error is not None:
            raise self._error

    def _take(self, end: int) -> bytes:
        out, self._buf = self._buf[:end], self._buf[end:]
        return out

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        self._fill(lambda: 0 <= size <= len(self._buf))
        return self._take(len(self._buf) if size < 0 else size)

    def readline(self, size: int = -1) -> bytes:
        self._fill(lambda: b"\n" in self._buf or 0 <= size <= len(self._buf))
        end = self._buf.find(b"\n") + 1 or len(self._buf)
        return self._take(end if size < 0 else min(end, size))


def _lines(chunks: Iterator[bytes], limit: int, keep: int) -> Iterator[tuple[bytes, int]]:
    """(line, its length) for each line; a line over `limit` bytes comes back as its first `keep`
    bytes with its true length, and was never held whole in memory."""
    buf, over, over_len = bytearray(), None, 0
    try:
        for chunk in chunks:
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                piece = chunk[start:] if nl < 0 else chunk[start:nl]
                if over is not None:
                    over_len += len(piece)
                else:
                    buf += piece
                    if len(buf) > limit:
                        over, over_len, buf = bytes(buf[:keep]), len(buf), bytearray()
                if nl < 0:
                    break
                if over is not None:
                    yield over, over_len
                    over, over_len = None, 0
                else:
                    yield bytes(buf), len(buf)
                    buf = bytearray()
                start = nl + 1
    except _Truncated as e:
        e.partial = bytes(over if over is not None else buf[:keep])
        raise
    if over is not None:
        yield over, over_len
    elif buf:
        yield bytes(buf), len(buf)


def _head_text(data: bytes, keep: int) -> str:
    return data[:keep].decode("utf-8", "replace")


def _no_surrogates(text: str) -> str:
    """Lone surrogates (JSON "\\ud800" escapes) cannot be written to Arrow: make them U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _charset(name: str) -> str | None:
    """A Python codec for a declared charset; Latin-1 means windows-1252, as in browsers."""
    try:
        codec = codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None
    return "cp1252" if codec in ("latin-1", "iso8859-1", "ascii") else codec


def decode_bytes(data: bytes, config: ReaderConfig, charset: str = "") -> tuple[str, str]:
    """(text, quarantine reason or ""). Strict UTF-8 first, since a legacy encoding almost never
    decodes as valid UTF-8 while mislabelled UTF-8 pages are common; then the declared charset;
    then UTF-8 with replacement if few enough bytes are invalid."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        codec = _charset(charset) if charset else None
        if codec and codec != "utf-8":
            return data.decode(codec, "replace").removeprefix("\ufeff"), ""
        text = data.decode("utf-8", "replace")
        bad = text.count("\ufffd") - data.count(b"\xef\xbf\xbd")  # U+FFFD already in the input is fine
        if bad > config.max_invalid_utf8_frac * len(data):
            return _head_text(data, config.keep_bytes), f"invalid utf-8 ({bad / len(data):.1%} of bytes)"
    return text.removeprefix("\ufeff"), ""


def binary_reason(head: bytes, config: ReaderConfig) -> str:
    """"binary" if the first bytes of a file hold a NUL or too many control bytes, else ""."""
    head = head[:config.sniff_bytes]
    if not head:
        return ""
    if b"\x00" in head:
        return "binary (NUL bytes)"
    control = len(head) - len(head.translate(None, _NON_TEXT))
    return f"binary ({control / len(head):.0%} control bytes)" if control > config.max_binary_frac * len(head) else ""


# ---- rows ----------------------------------------------------------------------------------------

def doc_id(uri: str, record: str) -> str:
    """Stable id: the same file and record give the same id on every run and machine."""
    return hashlib.sha1(f"{uri}#{record}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Rows:
    """Builds rows of one input."""

    def __init__(self, inp: Input, source: str, config: ReaderConfig):
        self.inp, self.source, self.config = inp, source, config
        self.content_type = {"html": "html", "code": "code"}.get(inp.format, "text")

    def row(self, record, text: str, quarantine: str = "", url: str = "", content_type: str | None = None,
            language: str = "") -> dict:
        record = str(record)
        return {"doc_id": doc_id(self.inp.uri, record), "text": _no_surrogates(text), "source": self.source,
                "uri": self.inp.uri, "record": record, "url": url, "format": self.inp.format,
                "content_type": content_type or self.content_type, "language": language,
                "quarantine": quarantine}

    def bad(self, record, reason: str, data: bytes | str = b"", **kw) -> dict:
        keep = self.config.keep_bytes
        text = data[:keep] if isinstance(data, str) else _head_text(data, keep)
        return self.row(record, text, quarantine=reason, **kw)

    def too_big(self, record, size: int | None, head: bytes, **kw) -> dict:
        """`size` None: a compressed file read up to the limit and no further."""
        limit = self.config.max_doc_bytes
        told = f"{size} > {limit} bytes" if size is not None else f"more than {limit} bytes decompressed"
        return self.bad(record, f"document over max_doc_bytes ({told})", head, **kw)


def read_input(inp: Input, source: str, config: ReaderConfig | None = None,
               stats: collections.Counter | None = None) -> Iterator[dict]:
    """Rows (dicts with the `ROW_SCHEMA` columns) of one input, in file order. `stats`, if given,
    counts records that are not documents and make no row ("skipped warc request", ...)."""
    config = config or ReaderConfig()
    if inp.format not in FORMATS:
        raise ValueError(f"unknown format {inp.format!r} for {inp.uri}; expected one of {FORMATS}")
    rows = _Rows(inp, source, config)
    fs, path = fsspec.core.url_to_fs(inp.uri)
    read = {"jsonl": _read_jsonl, "parquet": _read_parquet, "warc": _read_warc}.get(inp.format, _read_file)
    yield from read(fs, path, rows, stats if stats is not None else collections.Counter())


def _read_jsonl(fs, path: str, rows: _Rows, stats) -> Iterator[dict]:
    config, field_name = rows.config, rows.config.text_field
    lineno, records = 0, 0
    with fs.open(path, "rb") as f:
        try:
            for lineno, (line, size) in enumerate(_lines(_byte_chunks(f, _split_name(path)[1]),
                                                         config.max_doc_bytes, config.keep_bytes), 1):
                if not line.strip():
                    continue  # blank lines are not records
                records += 1
                if size > config.max_doc_bytes:
                    yield rows.too_big(lineno, size, line)
                    continue
                yield _jsonl_row(line, lineno, rows, field_name)
        except _Truncated as e:
            records += 1
            yield rows.bad(lineno + 1, str(e), e.partial)
    if records == 0:
        yield rows.bad("", "empty file")


def _jsonl_row(line: bytes, lineno: int, rows: _Rows, field_name: str) -> dict:
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        text, reason = decode_bytes(line, rows.config)
        if reason:
            return rows.bad(lineno, reason, line)
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            return rows.bad(lineno, f"invalid json: {e}", line)
    except (ValueError, RecursionError) as e:
        return rows.bad(lineno, f"invalid json: {e}", line)
    if not isinstance(obj, dict):
        return rows.bad(lineno, f"json line is {type(obj).__name__}, not an object", line)
    if field_name not in obj:
        return rows.bad(lineno, f"no field {field_name!r}", line)
    text = obj[field_name]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return rows.bad(lineno, f"field {field_name!r} is {kind}, not a string", line)
    url = obj.get(rows.config.url_field)
    return rows.row(lineno, text, url=url if isinstance(url, str) else "")


def _read_parquet(fs, path: str, rows: _Rows, stats) -> Iterator[dict]:
    import pyarrow.parquet as pq  # deferred: the CLI loads the reader config; only parquet inputs need it

    config = rows.config
    row = 0
    with fs.open(path, "rb") as f:
        try:
            # buffered: a column chunk is read page by page, not whole (a row group can be GBs)
            pf = pq.ParquetFile(f, buffer_size=_CHUNK)
        except Exception as e:  # not Parquet, cut short, empty
            f.seek(0)
            head = f.read(config.keep_bytes)
            yield rows.bad("", f"unreadable parquet: {e}" if head else "empty file", head)
            return
        names = pf.schema_arrow.names
        if config.text_field not in names:
            yield rows.bad("", f"parquet has no column {config.text_field!r} (columns: {', '.join(names)})")
            return
        columns = [config.text_field] + ([config.url_field] if config.url_field in names else [])
        try:
            for batch in pf.iter_batches(batch_size=config.parquet_batch_rows, columns=columns):
                texts = batch.column(0)
                urls = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
                yield from _parquet_rows(texts, urls, row, rows)
                row += len(texts)
        except Exception as e:  # a corrupt page or row group: the rows after it are lost
            yield rows.bad(row, f"corrupt parquet after row {row}: {e}")
            return
    if row == 0:
        yield rows.bad("", "empty file")


def _parquet_rows(texts: pa.Array, urls: list, first: int, rows: _Rows) -> Iterator[dict]:
    config, name = rows.config, rows.config.text_field
    kind = texts.type
    is_str, is_bin = pa.types.is_string(kind) or pa.types.is_large_string(kind), \
        pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    for i, (value, url) in enumerate(zip(texts.to_pylist(), urls)):
        record, url = first + i, url if isinstance(url, str) else ""
        if value is None:
            yield rows.bad(record, f"column {name!r} is null", url=url)
        elif is_bin:
            if len(value) > config.max_doc_bytes:
                yield rows.too_big(record, len(value), value, url=url)
                continue
            text, reason = decode_bytes(value, config)
            yield rows.bad(record, reason, value, url=url) if reason else rows.row(record, text, url=url)
        elif not is_str:
            yield rows.bad(record, f"column {name!r} is {kind}, not a string", str(value), url=url)
        elif len(value) > config.max_doc_bytes // 4 and len(value.encode("utf-8", "surrogatepass")) > config.max_doc_bytes:
            yield rows.too_big(record, len(value.encode("utf-8", "surrogatepass")), value.encode("utf-8", "replace"),
                               url=url)
        else:
            yield rows.row(record, value, url=url)


def _content_type(header: str) -> tuple[str, str]:
    """("text/html", "iso-8859-1") from a Content-Type header value."""
    mime, _, params = (header or "").partition(";")
    m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", params, re.I)
    return mime.strip().lower(), (m[1] if m else "")


def _read_warc(fs, path: str, rows: _Rows, stats) -> Iterator[dict]:
    from warcio.archiveiterator import ArchiveIterator  # deferred: slow to import, for WARC inputs only

    n = skipped = 0  # rows made, records skipped
    with fs.open(path, "rb") as f:
        try:
            reader = _ChunkReader(_byte_chunks(f, _split_name(path)[1]))
            records = ArchiveIterator(reader)
            last_skipped = None
            for rec in records:
                if rec.format != "warc":  # warcio guesses ARC for anything else: not a WARC file
                    n += 1
                    yield rows.bad("", f"not a WARC file (parsed as {rec.format})")
                    return
                if rec.rec_type != "response":
                    stats[f"skipped warc {rec.rec_type}"] += 1
                    skipped += 1
                    last_skipped = rec
                    continue
                last_skipped = None
                n += 1
                yield _warc_row(rec, rows)
            # warcio ends quietly at a cut: the last record short of its Content-Length (a
            # response is checked in _warc_row), or bytes after the last whole record
            if (last_skipped is not None and getattr(last_skipped.raw_stream, "limit", 0) > 0) \
                    or reader.total > records.offset:
                yield rows.bad(f"after record {n + skipped}", "truncated warc file")
                n += 1
        except _Truncated as e:
            yield rows.bad(f"after record {n + skipped}", str(e), e.partial)
            n += 1
        except Exception as e:  # warcio: unparsable headers, unknown format
            yield rows.bad(f"after record {n + skipped}", f"unreadable warc: {type(e).__name__}: {e}")
            n += 1
    if n == 0 and skipped == 0:
        yield rows.bad("", "empty file")


def _warc_row(rec, rows: _Rows) -> dict:
    config = rows.config
    headers = rec.rec_headers
    record_id = headers.get_header("WARC-Record-ID") or ""
    url = headers.get_header("WARC-Target-URI") or ""
    http = rec.http_headers
    if http is None:
        return rows.bad(record_id, "warc response without HTTP headers", url=url)
    status = http.get_statuscode() or ""
    ctype = http.get_header("Content-Type") or headers.get_header("WARC-Identified-Payload-Type") or ""
    mime, charset = _content_type(ctype)
    kind = _TEXT_CT.get(mime)
    stream = rec.content_stream()
    if not status.startswith("2"):
        return rows.bad(record_id, f"http status {status or 'missing'}", stream.read(config.keep_bytes), url=url)
    if kind is None:
        return rows.bad(record_id, f"content-type {mime or 'missing'}", stream.read(config.keep_bytes), url=url)
    data = stream.read(config.max_doc_bytes + 1)
    size = len(data)
    while chunk := stream.read(_CHUNK):  # drain the rest: its length only, and the cut check below
        size += len(chunk)
    if getattr(rec.raw_stream, "limit", 0) > 0:
        return rows.bad(record_id, "truncated warc record", data, url=url, content_type=kind)
    if size > config.max_doc_bytes:
        return rows.too_big(record_id, size, data, url=url, content_type=kind)
    if not data:
        return rows.bad(record_id, "empty payload", url=url, content_type=kind)
    if reason := binary_reason(data, config):
        return rows.bad(record_id, reason, data, url=url, content_type=kind)
    if kind == "html" and not charset:
        m = _META_CHARSET.search(data[:4096])
        charset = m[1].decode("ascii") if m else ""
    text, reason = decode_bytes(data, config, charset)
    if reason:
        return rows.bad(record_id, reason, data, url=url, content_type=kind)
    return rows.row(record_id, text, url=url, content_type=kind)


def _read_file(fs, path: str, rows: _Rows, stats) -> Iterator[dict]:
    """One html or code file = one record."""
    config, inp = rows.config, rows.inp
    record = posixpath.relpath(path, fsspec.core.url_to_fs(inp.root)[1]) if inp.format == "code" else ""
    language = code_language(path, config) if inp.format == "code" else ""
    compression = _split_name(path)[1]
    with fs.open(path, "rb") as f:
        size = None if compression else fs.size(path)
        if size is not None and size > config.max_doc_bytes:  # judged by its size: never read whole
            yield rows.too_big(record, size, f.read(config.keep_bytes), language=language)
            return
        data = bytearray()
        try:
            for chunk in _byte_chunks(f, compression):
                data += chunk
                if len(data) > config.max_doc_bytes:  # stop reading: the verdict is in
                    break
        except _Truncated as e:
            yield rows.bad(record, str(e), bytes(data), language=language)
            return
    data = bytes(data)
    if len(data) > config.max_doc_bytes:
        yield rows.too_big(record, None, data, language=language)
    elif not data.strip():
        yield rows.bad(record, "empty file", data, language=language)
    elif reason := binary_reason(data, config):
        yield rows.bad(record, reason, data, language=language)
    else:
        charset = ""
        if inp.format == "html":
            m = _META_CHARSET.search(data[:4096])
            charset = m[1].decode("ascii") if m else ""
        text, reason = decode_bytes(data, config, charset)
        yield rows.bad(record, reason, data, language=language) if reason else rows.row(record, text, language=language)
