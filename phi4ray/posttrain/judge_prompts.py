"""DPO round 2's prompts and the oracle that grades their responses where an answer is known.

Prompts are queries in the PTS format (phi4ray.posttrain.queries): the first `dpo.judge_prompts`
valid rows of `dpo.judge_prompts_file`, or toy-domain training questions drawn apart from PTS's
(seed + 2). Each query's kind grades a response as the eval stage would, so accuracy comes from
the oracle, which is exact, wherever the query has one (math, choice, code, the toy domain); the
judge scores the rest.
"""
from __future__ import annotations

import json
from pathlib import Path

from phi4ray.evals.kinds import get_kind
from phi4ray.evals.schema import EvalItem
from phi4ray.posttrain.queries import as_query, check_files_exist, load_query_file
from phi4ray.toy.arith import make_problems
from phi4ray.toy.evals import TOY_KIND

OPTION = "dpo.judge_prompts_file"


def judge_queries(cfg, out_dir: Path) -> tuple[list[dict], dict]:
    """(queries, counts {"read", "used", "quarantined"}) for round 2; a file's bad rows go to
    out_dir/quarantine.jsonl with file:line and the reason."""
    d = cfg.dpo
    if d.judge_prompts_file:
        return load_query_file(d.judge_prompts_file, cfg.pts.queries_kind, d.judge_prompts,
                               out_dir / "quarantine.jsonl", option=OPTION)
    queries = [as_query(EvalItem(q["id"], TOY_KIND.name, q["question"], q["answer"]))
               for q in make_problems(d.judge_prompts, cfg.seed + 2, cfg.arith)]
    return queries, {"read": len(queries), "used": len(queries), "quarantined": 0}


def as_prompt(query: dict) -> dict:
    """A query as build_judged_pairs takes it: the query itself rides as the oracle's reference."""
    return {"id": query["id"], "question": query["question"], "answer": json.dumps(query)}


def grade(text: str, reference: str) -> bool:
    """The judged-pairs oracle: the response graded by its query's kind."""
    query = json.loads(reference)
    return get_kind(query["kind"]).grade(EvalItem.from_json(query["item"]), text).correct


def judge_files(cfg) -> list[str]:
    """The dpo2 stage's input files (their contents join its key)."""
    return [cfg.dpo.judge_prompts_file] if cfg.dpo.judge_prompts_file else []


def check_judge_prompts(cfg, run_dir: Path, options: dict) -> None:
    """The prompts file exists (before Ray or an engine starts)."""
    check_files_exist(judge_files(cfg), OPTION)
