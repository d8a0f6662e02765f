r"""Our suites as lm-evaluation-harness tasks, run against the same OpenAI-compatible endpoint.

The endpoint that serves each stage answers lm-evaluation-harness's API models as well:
`local-completions` (POST .../v1/completions) and `local-chat-completions` (POST
.../v1/chat/completions). `write_lm_eval_task` writes a math suite as a `generate_until` task from
local files (a YAML with `dataset_path: json` and `data_files`, its JSONL, and a two-line
`utils.py`), and `run_lm_eval` runs it through `lm_eval.simple_evaluate`, so the harness's number
can be set beside our runner's on the same prompts.

The task reports two metrics on the last \boxed{...} of each answer (a regex filter):
`exact_match` (the harness's own, on the normalized string) and `oracle_match` (phi4ray's
`math_equal`, which takes 1/2 = \frac{1}{2} = 0.5 as our runner does).

No hub access (checked against lm-eval 0.4.13): `local-completions` defaults to
`tokenizer_backend="auto"`, which probes the server for a tokenizer endpoint and otherwise loads a
Hugging Face tokenizer *named after the model*, i.e. a hub download. So the backend is always given:
"none" without a tokenizer (requests go as text, `tokenized_requests=False`), or "huggingface"
with a local tokenizer folder only. Datasets come from the task's local JSONL via the packaged
`json` builder, cached inside the task folder; HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set before
lm_eval is imported, as a second guard.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from phi4ray.evals.kinds import render_prompt
from phi4ray.evals.schema import Suite
from phi4ray.verify.oracles import math_equal

# the content of the last \boxed{...}, allowing two levels of nested braces (\frac{1}{2})
BOXED_REGEX = r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")


def oracle_match(references: list[str], predictions: list[str]) -> float:
    """lm-eval metric: 1.0 when the (boxed) prediction equals the reference by phi4ray's oracle."""
    return float(math_equal(predictions[0], references[0]))


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def write_lm_eval_task(suite: Suite, out_dir: str | os.PathLike, *, task_name: str | None = None,
                       max_gen_toks: int = 1024) -> Path:
    """Write `<out_dir>/<task>.yaml`, `<task>.jsonl` (the rendered prompts and answers) and
    `utils.py` for a math suite; returns the YAML's path. The task is `phi4ray_<suite>` unless
    named. The YAML names its data file by absolute path: move the folder, write it again."""
    bad = next((item for item in suite.items if item.kind != "math"), None)
    if bad is not None:
        raise ValueError(f"write_lm_eval_task: suite {suite.name!r} has a {bad.kind!r} item ({bad.id!r}); "
                         "only math suites become lm-eval tasks")
    name = task_name or "phi4ray_" + re.sub(r"[^A-Za-z0-9_]", "_", suite.name)
    if not _TASK_NAME.fullmatch(name):
        raise ValueError(f"write_lm_eval_task: task_name={name!r} must be a letter then letters, digits or '_'")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for item in suite.items:
            f.write(json.dumps({"id": item.id, "question": render_prompt(item), "answer": item.reference},
                               ensure_ascii=False) + "\n")
    (out / "utils.py").write_text(
        '"""Written by phi4ray.evals.lm_eval_task: the oracle metric is phi4ray\'s math_equal."""\n'
        "from phi4ray.evals.lm_eval_task import oracle_match  # noqa: F401\n", encoding="utf-8")
    yaml = f"""\
# Written by phi4ray.evals.lm_eval_task from suite {suite.name} version {suite.version}.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {_yaml_str(str(data))}
  cache_dir: {_yaml_str(str(out / "hf_cache"))}
output_type: generate_until
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
num_fewshot: 0
generation_kwargs:
  # explicit stops: without `until` the harness stops at the first blank line
  until: ["<|im_end|>", "<|endoftext|>"]
  max_gen_toks: {int(max_gen_toks)}
  do_sample: false
  temperature: 0.0
filter_list:
  - name: boxed
    filter:
      - function: regex
        regex_pattern: {_yaml_str(BOXED_REGEX)}
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", " "]
  - metric: !function utils.oracle_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  suite_version: {_yaml_str(suite.version)}
"""
    path = out / f"{name}.yaml"
    path.write_text(yaml, encoding="utf-8")
    return path


def _api_url(base_url: str, chat: bool) -> str:
    """The full POST URL lm-eval wants, from a server root, a .../v1 base or a full URL."""
    url = base_url.rstrip("/")
    if url.endswith(("/completions", "/chat/completions")):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + ("/chat/completions" if chat else "/completions")


def run_lm_eval(base_url: str, model: str, task_dir: str | os.PathLike, *, chat: bool, limit: int | None = None,
                tokenizer: str | os.PathLike | None = None, task: str | None = None, num_concurrent: int = 8,
                max_retries: int = 3, timeout_s: int = 300, api_key_env: str | None = None,
                samples: bool = False) -> dict[str, Any]:
    """Run one task of `task_dir` (the only one there, or `task`) through lm_eval.simple_evaluate
    against the endpoint at `base_url` (e.g. http://host:8000/v1) serving `model`. Returns the
    task's metrics by name ("exact_match", "oracle_match" and their "_stderr"), plus "task" and
    "n" (documents evaluated); with `samples`, "samples" too: per document its prompt, target, the
    endpoint's response and the filtered answer the metrics scored. Call it from synchronous code:
    the harness runs its own event loop."""
    task_dir = Path(task_dir)
    names = sorted(p.stem for p in task_dir.glob("*.yaml"))
    if task is None:
        if len(names) != 1:
            raise ValueError(f"run_lm_eval: {task_dir} holds tasks {names}; name one with task=")
        task = names[0]
    elif task not in names:
        raise ValueError(f"run_lm_eval: no task {task!r} in {task_dir} (found {names})")
    model_args: dict[str, Any] = {"base_url": _api_url(base_url, chat), "model": model,
                                  "num_concurrent": num_concurrent, "max_retries": max_retries,
                                  "timeout": timeout_s, "tokenized_requests": False, "tokenizer_backend": "none"}
    if api_key_env:  # the key stays in the environment; only the request header carries it
        model_args["header"] = {"Authorization": f"Bearer {os.environ[api_key_env]}"}
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise ValueError(f"run_lm_eval: tokenizer={str(tokenizer)!r} must be a local folder (no hub names)")
        model_args.update(tokenizer_backend="huggingface", tokenizer=str(Path(tokenizer).resolve()))
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {var: os.environ.get(var) for var in offline}
    os.environ.update({var: "1" for var in offline})
    try:
        # deferred: lm_eval is an optional, slow import, and the offline variables must be set first
        import lm_eval
        from lm_eval.tasks import TaskManager

        # only our folder's tasks: the harness's own 200+ task folders are neither needed nor indexed
        manager = TaskManager(include_path=str(task_dir.resolve()), include_defaults=False)
        out = lm_eval.simple_evaluate(model="local-chat-completions" if chat else "local-completions",
                                      model_args=model_args, tasks=[task], task_manager=manager, limit=limit,
                                      apply_chat_template=chat, log_samples=samples)
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    raw = out["results"][task]
    metrics: dict[str, Any] = {"task": task, "n": int(out["n-samples"][task]["effective"])}
    for key, value in raw.items():
        metric, _, filt = key.partition(",")
        if filt:  # "exact_match,boxed" -> "exact_match": the task has one filter
            # plain floats (the harness hands back numpy scalars, or "N/A" for a missing stderr)
            metrics[metric] = float(value) if isinstance(value, (int, float)) or hasattr(value, "item") else value
    if samples:
        metrics["samples"] = [{"prompt": s["doc"]["question"], "target": s["target"], "response": s["resps"][0][0],
                               "answer": s["filtered_resps"][0]} for s in out["samples"][task]]
    return metrics
