"""Evaluation: verifiable suites and a runner against any OpenAI-compatible endpoint.

schema (EvalItem, Suite) and kinds (how each item kind is validated, shown and graded), jsonl
(suite files), generators (the built-in suites), runner (send, grade, summarize), files (the
run's suite files, and what curation decontaminates against), models (the run's models and their
lanes), scores (summary and plot), lm_eval_task (the same suites through lm-evaluation-harness,
and the harness's own registry tasks by name), converters (public benchmark files -> suites),
humaneval and ifeval (suites read from their packages).
"""
