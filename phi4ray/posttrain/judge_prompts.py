"""The prompts of judge-guided data (DPO round 2's pairs, SFT's best-of-N) and the oracle that
grades their responses where an answer is known.

Prompts are queries in the PTS format (phi4ray.posttrain.queries): the first rows of a query file,
or toy-domain training questions, each use drawn apart (PTS: seed + 1, DPO round 2: seed + 2,
synthesis: seed + 3 and + 4, best-of-N: seed + 5). Each query's kind grades a response as the
eval stage would, so accuracy comes from the oracle, which is exact, wherever the query has one
(math, choice, code, the toy domain); the judge scores the rest.
"""
from __future__ import annotations

import json
from pathlib import Path

from phi4ray.evals.kinds import get_kind
from phi4ray.evals.schema import EvalItem
from phi4ray.posttrain.queries import check_files_exist, load_query_file, toy_queries

OPTION = "dpo.judge_prompts_file"
BEST_OF_N_OPTION = "sft.best_of_n_file"


def prompt_queries(cfg, path: str, option: str, limit: int, seed: int, quarantine: Path) -> tuple[list[dict], dict]:
    """(queries, counts {"read", "used", "quarantined"}): the first `limit` valid rows of `path`
    (bad rows to `quarantine` with file:line and the reason; errors name `option`), or `limit`
    toy-domain training questions drawn with `seed`."""
    if path:
        return load_query_file(path, cfg.pts.queries_kind, limit, quarantine, option=option)
    queries = toy_queries(limit, seed, cfg.arith)
    return queries, {"read": len(queries), "used": len(queries), "quarantined": 0}


def judge_queries(cfg, out_dir: Path) -> tuple[list[dict], dict]:
    """DPO round 2's queries; a file's bad rows go to out_dir/quarantine.jsonl."""
    d = cfg.dpo
    return prompt_queries(cfg, d.judge_prompts_file, OPTION, d.judge_prompts, cfg.seed + 2, out_dir / "quarantine.jsonl")


def best_of_n_queries(cfg, out_dir: Path) -> tuple[list[dict], dict]:
    """SFT best-of-N's queries; a file's bad rows go to out_dir/best_of_n_quarantine.jsonl."""
    s = cfg.sft
    return prompt_queries(cfg, s.best_of_n_file, BEST_OF_N_OPTION, s.best_of_n_prompts, cfg.seed + 5,
                          out_dir / "best_of_n_quarantine.jsonl")


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


def best_of_n_files(cfg) -> list[str]:
    """The sft stage's input files: best-of-N's prompts and `sft.data` (their contents join its key)."""
    return [f for f in (cfg.sft.best_of_n_file if cfg.sft.best_of_n else "", cfg.sft.data) if f]


def check_judge_prompts(cfg, run_dir: Path, options: dict) -> None:
    """The prompts file exists (before Ray or an engine starts)."""
    check_files_exist(judge_files(cfg), OPTION)


def check_best_of_n_prompts(cfg, run_dir: Path, options: dict) -> None:
    if cfg.sft.best_of_n:
        check_files_exist([cfg.sft.best_of_n_file] if cfg.sft.best_of_n_file else [], BEST_OF_N_OPTION)
