"""The queries PTS searches: the user's own file, or the toy domain (as items of kind `toy`).

`pts.queries_file` (JSONL or Parquet, any fsspec path) holds one query per row in the evaluation
item format (`phi4ray.evals.schema.EvalItem`: id, kind, prompt, and the kind's reference / tests /
choices), so a suite file and a query file are the same thing. A row without `kind` takes
`pts.queries_kind`. Kinds that PTS can judge: `math` (final answer by `math_equal`), `choice`
(letter), `code` (the hidden tests in the sandbox). A bad row is kept aside in
RUN/pts/quarantine.jsonl with file:line and the reason; read = used + quarantined.

A query reaches the model as the SFT data renders a question: one user message, the item's prompt
then its kind's answer instruction (`phi4ray.evals.kinds.render_prompt`), the chat template, the
assistant's generation prompt. The oracle grades a rollout exactly as the eval stage grades a
response, so PTS prefers the tokens that the evaluation rewards.
"""
from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable

from phi4ray.evals.kinds import get_kind, render_prompt
from phi4ray.evals.schema import EvalItem, SuiteError
from phi4ray.run.rowfiles import check_files_exist, load_rows
from phi4ray.toy.arith import make_problems
from phi4ray.toy.evals import TOY_KIND

PTS_KINDS = ("math", "choice", "code")
_VERDICTS_PER_QUERY = 1024    # distinct rollout texts whose verdict one query's oracle remembers


def _item(row: object, default_kind: str, default_id: str) -> EvalItem:
    """The row as an item. GSM8K-style rows work as they are: `question` for prompt, `answer` for
    reference (its final "#### N" when it is a worked solution), no id (then file:line names it)."""
    if not isinstance(row, dict):
        raise SuiteError(f"a query must be an object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}  # Parquet fills a row's unused columns with null
    for alias, name in (("question", "prompt"), ("answer", "reference")):
        if alias in row and name not in row:
            row[name] = row.pop(alias)
    if isinstance(row.get("reference"), str) and "####" in row["reference"]:
        row["reference"] = row["reference"].rsplit("####", 1)[1].strip()
    row.setdefault("id", default_id)
    row.setdefault("kind", default_kind)
    if row["kind"] not in PTS_KINDS:
        raise SuiteError(f"kind={row['kind']!r}: PTS judges {', '.join(PTS_KINDS)}")
    return EvalItem.from_json(row)


def load_query_file(path: str, default_kind: str, limit: int, quarantine: Path,
                    option: str = "pts.queries_file") -> tuple[list[dict], dict]:
    """The first `limit` valid queries of the file, and its counts {"read", "used", "quarantined",
    "by_kind"}. Bad rows (invalid JSON, a field the kind refuses, a repeated id, a kind PTS cannot
    judge) go to `quarantine` as {"where", "reason", "row"}. The driver holds at most `limit`
    queries (phi4ray.run.rowfiles.load_rows). `option` names the file's config key in errors."""
    seen: set[str] = set()

    def parse(where: str, row: object) -> EvalItem:
        item = _item(row, default_kind, f"{Path(path).name}:{where.rsplit(':', 1)[1]}")
        if item.id in seen:
            raise SuiteError(f"id {item.id!r} repeats an earlier query")
        seen.add(item.id)
        return item

    items, counts = load_rows(path, parse, limit, quarantine, option=option, what="query",
                              errors=(SuiteError, TypeError))
    queries = [as_query(item) for item in items]
    return queries, {**counts, "by_kind": _by_kind(queries)}


def pts_queries(cfg, out_dir: Path) -> tuple[list[dict], dict]:
    """The run's queries and their counts: `pts.queries_file` when set, else `pts.queries` toy-domain
    training questions (held-out ones stay for evaluation)."""
    p = cfg.pts
    if p.queries_file:
        return load_query_file(p.queries_file, p.queries_kind, p.queries, out_dir / "quarantine.jsonl")
    queries = toy_queries(p.queries, cfg.seed + 1, cfg.arith)
    return queries, {"read": len(queries), "used": len(queries), "quarantined": 0, "by_kind": _by_kind(queries)}


def toy_queries(n: int, seed: int, arith, split: str = "train") -> list[dict]:
    """`n` toy-domain questions drawn with `seed` (phi4ray.toy.arith.make_problems), as queries."""
    return [as_query(EvalItem(q["id"], TOY_KIND.name, q["question"], q["answer"]))
            for q in make_problems(n, seed, arith, split=split)]


def as_query(item: EvalItem) -> dict:
    """A query as the stage hands it to a PTS actor: the question as the model sees it, the item."""
    return {"id": item.id, "kind": item.kind, "question": render_prompt(item), "item": item.to_json()}


def _by_kind(queries: list[dict]) -> dict[str, int]:
    return dict(Counter(q["kind"] for q in queries))


def query_files(cfg) -> list[str]:
    """The stage's input files (their contents join its key)."""
    return [cfg.pts.queries_file] if cfg.pts.queries_file else []


def check_queries_file(cfg, run_dir: Path, options: dict) -> None:
    """The queries file exists (the pts stage's `check`: before Ray or an engine starts)."""
    check_files_exist(query_files(cfg), "pts.queries_file")


def query_oracle(query: dict, tok) -> Callable[[list[int]], bool]:
    """oracle(solution_ids) -> bool for a query: its kind grading the decoded rollout as the eval
    stage would (the toy domain's queries are of kind `toy`: the domain's own answer check).
    Verdicts are remembered per rollout text (bounded, keyed by a digest so that long rollouts
    cost 16 bytes each): PTS samples the same short completions many times, and a code verdict
    costs a sandboxed interpreter."""
    item, kind = EvalItem.from_json(query["item"]), get_kind(query["kind"])
    verdicts: OrderedDict[bytes, bool] = OrderedDict()

    def oracle(ids: list[int]) -> bool:
        text = tok.decode_response(ids)
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in verdicts:
            verdicts.move_to_end(key)
        else:
            verdicts[key] = kind.grade(item, text).correct
            if len(verdicts) > _VERDICTS_PER_QUERY:
                verdicts.popitem(last=False)
        return verdicts[key]
    return oracle
