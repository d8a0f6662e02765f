"""Readers (phi4ray.data.curate.readers): listing, every format, and every kind of bad input, through
fsspec's memory:// filesystem and local files. Every record read becomes exactly one row."""
from __future__ import annotations

import collections
import gzip
import io
import json
import random
import tracemalloc
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from phi4ray.data.curate.documents import DocumentFilters
from phi4ray.data.curate.readers import COLUMNS, ROW_SCHEMA, Input, ReaderConfig, decode_bytes, list_inputs, read_input
from phi4ray.data.curate.shards import filter_shard, plan_shards, shard_file
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError
from phi4ray.run.overrides import OverrideError, apply_overrides, flatten

MEM = fsspec.filesystem("memory")
LICENSES = Path("/usr/share/common-licenses")


@pytest.fixture
def mem():
    """A fresh memory:// folder; returns (write(name, bytes) -> uri, root uri)."""
    root = f"/t{uuid.uuid4().hex[:10]}"

    def write(name: str, data: bytes) -> str:
        MEM.pipe(f"{root}/{name}", data)
        return f"memory://{root}/{name}"
    yield write, f"memory://{root}"
    MEM.rm(root, recursive=True)


def rows_of(uri: str, fmt: str, config: ReaderConfig | None = None, stats=None, root: str = "") -> list[dict]:
    rows = list(read_input(Input(uri, fmt, root), "src", config or ReaderConfig(), stats))
    pa.Table.from_pylist(rows, schema=ROW_SCHEMA)  # every row fits the schema
    for r in rows:
        assert tuple(r) == COLUMNS and r["source"] == "src" and r["uri"] == uri and r["format"] == fmt
    return rows


def reasons(rows):
    return [r["quarantine"] for r in rows]


def jsonl(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def warc_bytes(records, gzip_: bool = True) -> bytes:
    """records: (type, url, http status, content type, payload bytes)."""
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=gzip_)
    for rec_type, url, status, ctype, payload in records:
        http = None
        if rec_type == "response":
            http = StatusAndHeaders(status, [("Content-Type", ctype)] if ctype else [], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, rec_type, payload=io.BytesIO(payload), http_headers=http))
    return buf.getvalue()


# ---- listing -------------------------------------------------------------------------------------

def test_list_inputs_expands_sorts_and_reports_unknown_files(mem):
    write, root = mem
    for name in ("b/x.jsonl", "a.json", "c.ndjson.gz", "d.jsonl.zst", "e.parquet", "f.warc.gz", "g.warc",
                 "h.html", "i/j.htm", "i/k.html.gz", "notes.txt", "img.png", "data.parquet.gz", ".git/config"):
        write(name, b"x")
    listing = list_inputs([root])
    got = [(i.uri.removeprefix(root + "/"), i.format) for i in listing.inputs]
    assert got == [("a.json", "jsonl"), ("b/x.jsonl", "jsonl"), ("c.ndjson.gz", "jsonl"), ("d.jsonl.zst", "jsonl"),
                   ("e.parquet", "parquet"), ("f.warc.gz", "warc"), ("g.warc", "warc"), ("h.html", "html"),
                   ("i/j.htm", "html"), ("i/k.html.gz", "html")]
    assert [s.removeprefix(root + "/") for s in listing.skipped] == ["data.parquet.gz", "img.png", "notes.txt"]
    assert list_inputs([root]) == listing  # stable
    globbed = list_inputs([f"{root}/i/*", f"{root}/a.json", f"{root}/a.json"])
    assert [i.uri.removeprefix(root + "/") for i in globbed.inputs] == ["a.json", "i/j.htm", "i/k.html.gz"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_inputs([f"{root}/nothing-here"])
    with pytest.raises(FileNotFoundError, match=r"\*\.zip"):
        list_inputs([f"{root}/*.zip"])


def test_code_repositories_by_prefix_or_config(mem):
    write, root = mem
    for name in ("repo/src/main.py", "repo/src/util.rs", "repo/Makefile", "repo/README.md", "repo/.git/HEAD",
                 "repo/node_modules/x/index.js", "repo/lib/a.js", "dump.txt"):
        write(name, b"x = 1\n")
    listing = list_inputs([f"code:{root}/repo"])
    assert [(i.uri.removeprefix(root + "/repo/"), i.format) for i in listing.inputs] == [
        ("Makefile", "code"), ("lib/a.js", "code"), ("src/main.py", "code"), ("src/util.rs", "code")]
    assert all(i.root == f"{root}/repo" for i in listing.inputs)
    assert [s.removeprefix(root + "/") for s in listing.skipped] == ["repo/README.md"]
    config = ReaderConfig(formats=(f"{root}/repo=code", f"{root}/dump.txt=jsonl"))
    assert list_inputs([f"{root}/repo"], config).inputs == listing.inputs
    assert list_inputs([f"{root}/dump.txt"], config).inputs[0].format == "jsonl"
    rows = [r for i in listing.inputs for r in rows_of(i.uri, "code", root=i.root)]
    assert [(r["record"], r["language"], r["content_type"]) for r in rows] == [
        ("Makefile", "makefile", "code"), ("lib/a.js", "javascript", "code"), ("src/main.py", "python", "code"),
        ("src/util.rs", "rust", "code")]
    assert all(r["text"] == "x = 1\n" and r["quarantine"] == "" for r in rows)


def test_local_paths_and_stable_ids(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_bytes(jsonl({"text": "one"}, {"text": "two"}))
    (inp,) = list_inputs([str(tmp_path / "d")]).inputs
    assert inp.uri == f"file://{tmp_path}/d/a.jsonl"
    first = rows_of(inp.uri, "jsonl")
    again = rows_of(list_inputs([f"file://{tmp_path}/d/a.jsonl"]).inputs[0].uri, "jsonl")
    assert [r["doc_id"] for r in first] == [r["doc_id"] for r in again]
    assert len({r["doc_id"] for r in first}) == 2 and all(len(r["doc_id"]) == 16 for r in first)
    assert [(r["text"], r["record"]) for r in first] == [("one", "1"), ("two", "2")]


# ---- JSONL ---------------------------------------------------------------------------------------

def test_jsonl_bad_lines_each_become_one_quarantined_row(mem):
    write, _ = mem
    data = (jsonl({"text": "good", "url": "https://a.example/x"}) + b"\n  \n" + b"{broken json\n"
            + jsonl({"body": "no text"}, {"text": 42}, {"text": None}, [1, 2], {"text": "tail\u2028"})
            + b'{"text": "lone \\ud800 surrogate"}\n' + b'{"text": "no newline at end"}')
    rows = rows_of(write("a.jsonl", data), "jsonl")
    assert [r["record"] for r in rows] == ["1", "4", "5", "6", "7", "8", "9", "10", "11"]
    assert reasons(rows) == [
        "", rows[1]["quarantine"], "no field 'text'", "field 'text' is int, not a string",
        "field 'text' is null, not a string", "json line is list, not an object", "", "", ""]
    assert rows[1]["quarantine"].startswith("invalid json") and rows[1]["text"] == "{broken json"
    assert rows[0]["url"] == "https://a.example/x" and rows[2]["url"] == ""
    assert rows[2]["text"] == '{"body": "no text"}'  # the offending line, for a human
    assert rows[7]["text"] == "lone \ufffd\ufffd\ufffd surrogate"  # Arrow cannot hold a lone surrogate
    assert rows[8]["text"] == "no newline at end"
    custom = rows_of(write("b.jsonl", jsonl({"content": "c", "link": "u"}, {"text": "t"})), "jsonl",
                     ReaderConfig(text_field="content", url_field="link"))
    assert [(r["text"], r["url"], r["quarantine"]) for r in custom] == [
        ("c", "u", ""), ('{"text": "t"}', "", "no field 'content'")]


def test_invalid_utf8_threshold(mem):
    write, _ = mem
    good = "ünïcödé text " * 100
    few = json.dumps({"text": good}, ensure_ascii=False).encode().replace("ü".encode(), b"\xfc", 1)
    many = json.dumps({"text": good}, ensure_ascii=False).encode().replace("ü".encode(), b"\xfc")
    rows = rows_of(write("u.jsonl", few + b"\n" + many + b"\n"), "jsonl")
    assert rows[0]["quarantine"] == "" and rows[0]["text"].count("\ufffd") == 1
    assert rows[1]["quarantine"].startswith("invalid utf-8") and len(rows[1]["text"].encode()) <= 1024 * 3
    text, why = decode_bytes("café".encode("cp1252"), ReaderConfig(), charset="iso-8859-1")
    assert (text, why) == ("café", "")
    assert decode_bytes("\ufeffbom".encode(), ReaderConfig()) == ("bom", "")


def test_oversized_jsonl_line_is_quarantined_with_a_bounded_sample(tmp_path):
    # a local file: memory:// hands out a copy of the whole file on open
    big = json.dumps({"text": "x" * 50 * 2**20}).encode()
    (tmp_path / "big.jsonl").write_bytes(jsonl({"text": "before"}) + big + b"\n" + jsonl({"text": "after"}))
    uri = f"file://{tmp_path}/big.jsonl"
    tracemalloc.start()
    rows = rows_of(uri, "jsonl")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert reasons(rows)[0] == "" and reasons(rows)[2] == ""
    assert rows[1]["quarantine"].startswith("document over max_doc_bytes (52428")
    assert len(rows[1]["text"]) == 1024
    # a line is buffered up to max_doc_bytes (10 MiB, plus one 1 MiB chunk), never its 50 MB
    assert peak < 16 * 2**20


def test_truncated_and_corrupt_compressed_jsonl(mem):
    write, _ = mem
    lines = jsonl(*({"text": f"line {i}"} for i in range(20000)))
    gz, zst = gzip.compress(lines), zstandard.ZstdCompressor().compress(lines)
    for name, data, why in (("a.jsonl.gz", gz[: len(gz) // 2], "truncated gzip stream"),
                            ("b.jsonl.zst", zst[: len(zst) // 2], "truncated zstd stream"),
                            ("c.jsonl.gz", b"this is not gzip at all\n", "corrupt gzip stream")):
        rows = rows_of(write(name, data), "jsonl")
        assert reasons(rows)[:-1] == [""] * (len(rows) - 1) and rows[-1]["quarantine"].startswith(why), name
        assert [r["text"] for r in rows[:-1]] == [f"line {i}" for i in range(len(rows) - 1)]
        assert rows[-1]["record"] == str(len(rows))
    whole = rows_of(write("d.jsonl.gz", gz + gzip.compress(jsonl({"text": "second member"}))), "jsonl")
    assert len(whole) == 20001 and set(reasons(whole)) == {""} and whole[-1]["text"] == "second member"
    assert len(rows_of(write("e.jsonl.zst", zst), "jsonl")) == 20000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=40).map(lambda t: json.dumps({"text": t}).encode()),
                          st.just(b"   ")), max_size=25))
def test_any_bytes_give_one_row_per_record_and_never_raise(mem, lines):
    write, _ = mem
    lines = [ln.replace(b"\n", b" ") for ln in lines]
    rows = rows_of(write(f"h{random.random()}.jsonl", b"\n".join(lines)), "jsonl")
    records = sum(bool(ln.strip()) for ln in lines)
    assert len(rows) == max(records, 1)
    if records == 0:
        assert reasons(rows) == ["empty file"]


# ---- whole files: html and code ------------------------------------------------------------------

def test_html_files_keep_raw_html_and_charset(mem):
    write, _ = mem
    page = '<html><head><meta charset="iso-8859-1"><title>Café</title></head><body><p>Crème brûlée</p></body></html>'
    rows = rows_of(write("p.html", page.encode("latin-1")), "html")
    assert [(r["text"], r["content_type"], r["quarantine"]) for r in rows] == [(page, "html", "")]
    rows = rows_of(write("q.html.gz", gzip.compress(page.encode("utf-8"))), "html")
    assert rows[0]["text"] == page


def test_big_single_files_are_judged_without_reading_them(tmp_path):
    body = b"<p>" + b"word " * (10 * 2**20) + b"</p>"  # 50 MB, local: memory:// copies a file on open
    root = f"file://{tmp_path}"
    for name, data in (("big.html", body), ("big.py", body), ("big.html.gz", gzip.compress(body, 1))):
        (tmp_path / name).write_bytes(data)
    uris = [f"{root}/big.html", f"{root}/big.py", f"{root}/big.html.gz"]
    for uri, fmt in zip(uris, ("html", "code", "html")):
        tracemalloc.start()
        rows = rows_of(uri, fmt, root=root)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(rows) == 1 and rows[0]["quarantine"].startswith("document over max_doc_bytes"), uri
        assert rows[0]["text"].startswith("<p>word") and len(rows[0]["text"]) == 1024
        limit = 4 * 2**20 if not uri.endswith(".gz") else 30 * 2**20  # a .gz is read to the limit, no further
        assert peak < limit, (uri, peak)


def test_empty_and_binary_files(mem):
    write, root = mem
    cases = [("e.jsonl", "jsonl"), ("e.html", "html"), ("e.py", "code"), ("e.parquet", "parquet"),
             ("e.warc", "warc"), ("e.jsonl.gz", "jsonl"), ("blank.jsonl", "jsonl")]
    for name, fmt in cases:
        rows = rows_of(write(name, b"\n\n" if name == "blank.jsonl" else b""), fmt, root=root)
        assert reasons(rows) == ["empty file"], name
    rng = random.Random(0)
    binary = bytes(rng.randrange(256) for _ in range(4096))
    elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 100 + b"code" * 100
    control = bytes(rng.choice(b"\x01\x02\x03abcdefgh") for _ in range(2000))
    for name, data, fmt in (("r.py", binary, "code"), ("elf.html", elf, "html"), ("ctl.c", control, "code")):
        (row,) = rows_of(write(name, data), fmt, root=root)
        assert row["quarantine"].startswith("binary"), name
        assert 0 < len(row["text"].encode("utf-8")) <= 3 * 1024
    (row,) = rows_of(write("latin.py", "# café\n".encode("latin-1") * 50), "code", root=root)
    assert row["quarantine"].startswith("invalid utf-8")


# ---- Parquet -------------------------------------------------------------------------------------

def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=3)
    return buf.getvalue()


def test_parquet_rows_nulls_urls_and_bad_columns(mem):
    write, _ = mem
    uri = write("a.parquet", parquet_bytes(pa.table({"text": ["a", None, "c", "d" * 200], "url": ["u0", None, "u2", ""],
                                                     "other": [1, 2, 3, 4]})))
    rows = rows_of(uri, "parquet", ReaderConfig(max_doc_bytes=100))
    assert [(r["record"], r["text"][:3], r["url"]) for r in rows] == [("0", "a", "u0"), ("1", "", ""), ("2", "c", "u2"),
                                                                     ("3", "ddd", "")]
    assert reasons(rows)[:3] == ["", "column 'text' is null", ""] and rows[3]["quarantine"].startswith("document over")
    (row,) = rows_of(write("b.parquet", parquet_bytes(pa.table({"body": ["x"]}))), "parquet")
    assert row["quarantine"] == "parquet has no column 'text' (columns: body)"
    rows = rows_of(write("c.parquet", parquet_bytes(pa.table({"text": pa.array([b"ok", b"\xff\xfe\xfd"])}))), "parquet")
    assert [(r["text"], r["quarantine"][:13]) for r in rows] == [("ok", ""), ("\ufffd\ufffd\ufffd", "invalid utf-8")]
    rows = rows_of(write("d.parquet", parquet_bytes(pa.table({"text": [1, 2]}))), "parquet")
    assert reasons(rows) == ["column 'text' is int64, not a string"] * 2 and rows[0]["text"] == "1"
    (row,) = rows_of(write("e.parquet", b"PAR1 this is not parquet PAR1"), "parquet")
    assert row["quarantine"].startswith("unreadable parquet") and "not parquet" in row["text"]
    data = parquet_bytes(pa.table({"text": [f"row {i}" for i in range(10)]}))
    (row,) = rows_of(write("f.parquet", data[: len(data) // 2]), "parquet")
    assert row["quarantine"].startswith("unreadable parquet")
    (row,) = rows_of(write("g.parquet", parquet_bytes(pa.table({"text": pa.array([], pa.string())}))), "parquet")
    assert row["quarantine"] == "empty file"


# ---- WARC ----------------------------------------------------------------------------------------

def test_warc_responses_become_rows_and_the_rest_is_counted(mem):
    write, _ = mem
    records = [
        ("warcinfo", "", "", "", b"software: test"),
        ("request", "https://a.example/", "", "", b"GET / HTTP/1.1\r\n\r\n"),
        ("response", "https://a.example/", "200 OK", "text/html; charset=ISO-8859-1",
         "<html><body>Café</body></html>".encode("latin-1")),
        ("response", "https://a.example/robots.txt", "200 OK", "text/plain", b"User-agent: *"),
        ("response", "https://a.example/logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50),
        ("response", "https://a.example/missing", "404 Not Found", "text/html", b"<h1>nope</h1>"),
        ("response", "https://a.example/bin", "200 OK", "text/html", b"\x00\x01\x02" * 100),
        ("metadata", "https://a.example/", "", "", b"fetchTimeMs: 12"),
    ]
    for gz in (True, False):
        stats = collections.Counter()
        rows = rows_of(write(f"a{gz}.warc" + (".gz" if gz else ""), warc_bytes(records, gz)), "warc", stats=stats)
        assert [(r["url"], r["content_type"], r["quarantine"]) for r in rows] == [
            ("https://a.example/", "html", ""), ("https://a.example/robots.txt", "text", ""),
            ("https://a.example/logo.png", "text", "content-type image/png"),
            ("https://a.example/missing", "text", "http status 404"),
            ("https://a.example/bin", "html", "binary (NUL bytes)")]
        assert rows[0]["text"] == "<html><body>Café</body></html>" and rows[1]["text"] == "User-agent: *"
        assert all(r["record"].startswith("<urn:uuid:") for r in rows)
        assert stats == {"skipped warc warcinfo": 1, "skipped warc request": 1, "skipped warc metadata": 1}
        assert rows_of(rows[0]["uri"], "warc")[0]["doc_id"] == rows[0]["doc_id"]


def test_truncated_and_foreign_warc_files(mem):
    write, _ = mem
    records = [("response", f"https://b.example/{i}", "200 OK", "text/html", b"<p>page</p>" * 200) for i in range(4)]
    for gz in (True, False):
        data = warc_bytes(records, gz)
        rows = rows_of(write(f"t{gz}.warc" + (".gz" if gz else ""), data[: len(data) * 5 // 8]), "warc")
        assert reasons(rows)[:2] == ["", ""] and rows[-1]["quarantine"].startswith("truncated"), reasons(rows)
        assert len(rows) <= 4
    (row,) = rows_of(write("x.warc", b"this is a plain text file\r\nnot a warc\r\n\r\n"), "warc")
    assert row["quarantine"].startswith(("not a WARC", "unreadable warc"))
    (row,) = rows_of(write("y.warc", bytes(range(256)) * 4), "warc")
    assert row["quarantine"].startswith("unreadable warc")


def test_reader_config_validates():
    with pytest.raises(ConfigError, match="max_doc_bytes"):
        ReaderConfig(max_doc_bytes=0)
    with pytest.raises(ConfigError, match="text_field"):
        ReaderConfig(text_field="")
    with pytest.raises(ConfigError, match="formats"):
        ReaderConfig(formats=("/x=csv",))
    with pytest.raises(ConfigError, match="max_invalid_utf8_frac"):
        ReaderConfig(max_invalid_utf8_frac=2)
    with pytest.raises(ValueError, match="unknown format"):
        list(read_input(Input("memory:///x", "csv"), "s"))


def test_text_under_another_field_curates_through_the_reader_config(tmp_path):
    """`curate.reader.*` reaches the reader the curate stage uses: a JSONL with its text under
    `content` is quarantined as a whole by default and curated with curate.reader.text_field=content."""
    docs = [(LICENSES / name).read_text() for name in ("GPL-3", "Apache-2.0", "MPL-2.0")]
    path = tmp_path / "in" / "docs.jsonl"
    path.parent.mkdir()
    path.write_bytes(jsonl(*({"content": d, "link": f"https://x.test/{i}"} for i, d in enumerate(docs))))
    base = [f"curate.inputs=web={path}", "curate.filters=corruption,language"]
    for extra, want in (([], ["quarantined"] * 3),
                        (["curate.reader.text_field=content", "curate.reader.url_field=link"], ["kept"] * 3)):
        cfg = apply_overrides(run_preset("tiny"), base + extra)
        shards, skipped = plan_shards(tmp_path / "run", cfg)
        assert len(shards) == 1 and not skipped
        out = tmp_path / "shards" / str(len(extra))
        out.mkdir(parents=True)
        assert filter_shard(shards[0], DocumentFilters(cfg.curate), out) == 3
        rows = pq.read_table(shard_file(out, shards[0])).to_pylist()
        assert [r["status"] for r in rows] == want
        if extra:
            assert [r["text"] for r in rows] == docs and rows[1]["url"] == "https://x.test/1"
            assert all(r["lang"] == "en" and r["n_words"] > 100 for r in rows)
        else:
            assert {r["reason"] for r in rows} == {"no field 'text'"}


def test_reader_config_round_trips_as_overrides():
    """Every reader setting is a config key (tables as key=value entries), so a dumped config reads back."""
    cfg = apply_overrides(run_preset("tiny"), ["curate.reader.formats=/data/a=b/dump.txt=jsonl",
                                               "curate.reader.code_languages=pyx=cython,m=",
                                               "curate.reader.ignore_dirs=.git,build"])
    r = cfg.curate.reader
    assert r.format_table == {"/data/a=b/dump.txt": "jsonl"}
    assert r.language_table["pyx"] == "cython" and "m" not in r.language_table and r.language_table["py"] == "python"
    keys = [f"{k}={v}" for k, v in flatten(cfg).items() if k.startswith("curate.")]
    assert apply_overrides(run_preset("tiny"), keys) == cfg
    with pytest.raises(OverrideError, match="not one of"):
        apply_overrides(cfg, ["curate.reader.formats=/x=csv"])
