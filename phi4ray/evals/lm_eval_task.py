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

lm-eval's own registry (`run_lm_eval_tasks`, the eval stage's `eval.lm_eval_tasks`): tasks by name,
its built-in ones or the user's from an include folder, run offline the same way. A task's data set
must be on this machine: in the HF datasets cache, or named by `data_files` in the user's YAML. A
task whose data is not (or that fails otherwise) is recorded with its error, and the other tasks
still run. Indexing the registry (about 14,700 names, 9 s on a loaded 2-core machine) is done once
per process and include folder.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from phi4ray.evals.jsonl import atomic_write
from phi4ray.evals.kinds import render_prompt
from phi4ray.evals.schema import Suite
from phi4ray.run.errors import ConfigError
from phi4ray.verify.oracles import math_equal

# the content of the last \boxed{...}, allowing two levels of nested braces (\frac{1}{2})
BOXED_REGEX = r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
log = logging.getLogger(__name__)


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


OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# the flags huggingface_hub and datasets read from OFFLINE_VARS once, when first imported
_OFFLINE_FLAGS = {"huggingface_hub.constants": ("HF_HUB_OFFLINE",),
                  "datasets.config": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
# one harness run at a time in a process: the offline switch and lm-eval's own state are process-wide
_HARNESS = threading.RLock()


@contextmanager
def offline() -> Iterator[None]:
    """No hub access for the block: the variables set (for modules first imported inside, which stay
    offline), and the flags of huggingface_hub and datasets if already imported (they read the
    variables once) switched on, then put back. Blocks of several threads run one at a time."""
    with _HARNESS:
        saved = {var: os.environ.get(var) for var in OFFLINE_VARS}
        os.environ.update({var: "1" for var in OFFLINE_VARS})
        flags = [(mod, name, getattr(mod, name)) for module, names in _OFFLINE_FLAGS.items()
                 if (mod := sys.modules.get(module)) is not None for name in names if hasattr(mod, name)]
        for mod, name, _ in flags:
            setattr(mod, name, True)
        try:
            yield
        finally:
            for mod, name, value in flags:
                setattr(mod, name, value)
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _model_args(base_url: str, model: str, chat: bool, tokenizer, num_concurrent: int, max_retries: int,
                timeout_s: int, api_key_env: str | None, who: str) -> dict[str, Any]:
    args: dict[str, Any] = {"base_url": _api_url(base_url, chat), "model": model, "num_concurrent": num_concurrent,
                            "max_retries": max_retries, "timeout": timeout_s, "tokenized_requests": False,
                            "tokenizer_backend": "none"}
    # the key stays in the environment; only the request header carries it. Without one, a header of
    # our own: lm-eval's default sends the user's OPENAI_API_KEY to whatever URL it is given
    key = os.environ.get(api_key_env) if api_key_env else None
    args["header"] = {"Authorization": f"Bearer {key}"} if key else {"Accept": "application/json"}
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise ValueError(f"{who}: tokenizer={str(tokenizer)!r} must be a local folder (no hub names)")
        args.update(tokenizer_backend="huggingface", tokenizer=str(Path(tokenizer).resolve()))
    return args


def _evaluate(manager, task: str, model_args: dict, chat: bool, limit: int | None, samples: bool) -> dict:
    # deferred: lm_eval is a slow import, and the offline switch (held by the caller) comes first
    import lm_eval

    return lm_eval.simple_evaluate(model="local-chat-completions" if chat else "local-completions",
                                   model_args=model_args, tasks=[task], task_manager=manager, limit=limit,
                                   apply_chat_template=chat, log_samples=samples)


def _plain(value: Any) -> Any:
    """A JSON value: the harness hands back numpy scalars, and "N/A" for a stderr it did not compute."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None if value == "N/A" else value


def run_lm_eval(base_url: str, model: str, task_dir: str | os.PathLike, *, chat: bool, limit: int | None = None,
                tokenizer: str | os.PathLike | None = None, task: str | None = None, num_concurrent: int = 8,
                max_retries: int = 3, timeout_s: int = 300, api_key_env: str | None = None,
                samples: bool = False) -> dict[str, Any]:
    """Run one task of `task_dir` (the only one there, or `task`) through lm_eval.simple_evaluate
    against the endpoint at `base_url` (e.g. http://host:8000/v1) serving `model`. Returns the
    task's metrics by name ("exact_match", "oracle_match" and their "_stderr"), plus "task" and
    "n" (documents evaluated); with `samples`, "samples" too: per document its prompt, target, the
    endpoint's response and the filtered answer the metrics scored. `api_key_env` names the
    variable holding the endpoint's key (none sent when unset). Call it from synchronous code (or a
    thread): the harness runs its own event loop."""
    task_dir = Path(task_dir)
    names = sorted(p.stem for p in task_dir.glob("*.yaml"))
    if task is None:
        if len(names) != 1:
            raise ValueError(f"run_lm_eval: {task_dir} holds tasks {names}; name one with task=")
        task = names[0]
    elif task not in names:
        raise ValueError(f"run_lm_eval: no task {task!r} in {task_dir} (found {names})")
    model_args = _model_args(base_url, model, chat, tokenizer, num_concurrent, max_retries, timeout_s, api_key_env,
                             "run_lm_eval")
    with offline():
        # deferred: lm_eval is a slow import, and the offline switch comes first
        from lm_eval.tasks import TaskManager

        # only our folder's tasks: the harness's own 200+ task folders are neither needed nor indexed
        manager = TaskManager(include_path=str(task_dir.resolve()), include_defaults=False)
        out = _evaluate(manager, task, model_args, chat, limit, samples)
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


# --- lm-eval's own registry ---------------------------------------------------------------------
def include_files(include: str | os.PathLike | None) -> list[str]:
    """The task definitions of an include folder (YAML and Python files, recursively), sorted: what a
    changed task means. Data files are not among them (they can be large, or live elsewhere)."""
    if not include:
        return []
    return sorted(str(p) for p in Path(include).rglob("*")
                  if p.is_file() and p.suffix in (".yaml", ".yml", ".py") and "__pycache__" not in p.parts)


def include_digest(include: str | os.PathLike | None) -> str:
    """sha256 of the include folder's task definitions (names relative to it, and bytes)."""
    h = hashlib.sha256()
    for f in include_files(include):
        h.update(os.path.relpath(f, include).encode() + b"\0" + Path(f).read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _task_manager(include: str | None):
    with offline():
        # deferred: lm_eval is a slow import, and the offline switch comes first
        from lm_eval.tasks import TaskManager

        return TaskManager(include_path=include, include_defaults=True)


def task_manager(include: str | os.PathLike | None = None):
    """lm-eval's registry: its built-in tasks, groups and tags, and the include folder's (which
    take precedence). Indexed once per process and folder (about 9 s: the 14,700 built-in names)."""
    return _task_manager(str(Path(include).resolve()) if include else None)


def check_lm_eval_tasks(tasks: tuple[str, ...] | list[str], include: str | os.PathLike | None = None) -> None:
    """Every name is a task, group or tag of lm-eval's registry (with the include folder's), or a
    ConfigError naming the unknown ones and the closest names there are. Nothing is loaded."""
    if not tasks:
        return
    known = task_manager(include).task_index
    unknown = [t for t in tasks if t not in known]
    if unknown:
        close = {t: difflib.get_close_matches(t, list(known), n=3, cutoff=0.6) for t in unknown}
        hints = "; ".join(f"{t!r}: did you mean {', '.join(c)}?" if c else f"{t!r}: nothing close" for t, c in close.items())
        where = f"lm-eval's registry and {include}" if include else "lm-eval's registry (no eval.lm_eval_include)"
        raise ConfigError(f"eval.lm_eval_tasks: unknown task(s) {unknown} in {where}. {hints}")


def _data_not_local(e: BaseException) -> bool:
    """The datasets library could not get a data set without the hub (or a local file is missing)."""
    return isinstance(e, (ConnectionError, FileNotFoundError)) or "OfflineModeIsEnabled" in f"{type(e).__name__}: {e}"


def task_error(task: str, e: BaseException) -> str:
    """The line recorded for a task that failed: its name, what went wrong and, for data that is not
    on this machine, the fix."""
    if _data_not_local(e):
        return (f"lm-eval task {task!r}: its data set is not on this machine ({type(e).__name__}: {e}). lm-eval "
                "tasks run offline: put the data set in the HF datasets cache (HF_DATASETS_CACHE) or point the "
                "task's YAML at local files (dataset_path: json, dataset_kwargs.data_files) in eval.lm_eval_include")
    return f"lm-eval task {task!r} failed: {type(e).__name__}: {e}"


def _config_sha(config: Any) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _results(out: dict) -> dict[str, Any]:
    """One simple_evaluate's results, per task or group it reported: documents evaluated ("n": a
    group's or tag's is its tasks' sum), every metric of every filter under lm-eval's own key
    "metric,filter" (e.g. "exact_match,strict-match", "acc_stderr,none"), the task's version and a
    hash of the config it ran with."""
    per: dict[str, Any] = {}
    for name, raw in out["results"].items():
        entry: dict[str, Any] = {"metrics": {k: _plain(v) for k, v in raw.items() if "," in k}}
        if name in out.get("n-samples", {}):
            entry["n"] = int(out["n-samples"][name]["effective"])
        if name in out.get("versions", {}):
            entry["version"] = _plain(out["versions"][name])
        if name in out.get("configs", {}):
            entry["config_sha"] = _config_sha(out["configs"][name])
        per[name] = entry
    return {"n": sum(int(v["effective"]) for v in out.get("n-samples", {}).values()), "results": per}


def _samples(out: dict) -> dict[str, list[dict]]:
    """Per task, per document and filter: the document, target, raw responses, the filtered answer
    and the per-document metric values (JSON: the harness's tuples become lists)."""
    return {task: [json.loads(json.dumps({"doc": s["doc"], "target": s["target"], "filter": s.get("filter"),
                                          "resps": s["resps"], "filtered_resps": s["filtered_resps"],
                                          "metrics": {m: s[m] for m in s.get("metrics", []) if m in s}},
                                         default=_plain))
                   for s in rows] for task, rows in out.get("samples", {}).items()}


def lm_eval_version() -> str:
    # deferred: importlib.metadata reads the installed package's record; only lm-eval runs need it
    from importlib.metadata import version

    return version("lm_eval")


def run_lm_eval_tasks(base_url: str, model: str, tasks: list[str] | tuple[str, ...], *,
                      include: str | os.PathLike | None = None, chat: bool, limit: int | None = None,
                      tokenizer: str | os.PathLike | None = None, num_concurrent: int = 8, max_retries: int = 3,
                      timeout_s: int = 300, api_key_env: str | None = None,
                      samples: bool = False) -> dict[str, Any]:
    """Tasks of lm-eval's registry by name (built-in ones, or the `include` folder's, which take
    precedence), each through lm_eval.simple_evaluate against the endpoint at `base_url` serving
    `model`, offline: a task's data must be on this machine. Each name runs on its own, so one that
    fails (its data set not local, say) is recorded and the others still run. Returns
    {"lm_eval_version", "tasks": {name: {"n", "results": {task or group: {"n", "metrics",
    "version", "config_sha"}}} or {"error": line}}}, and with `samples` each result's "samples".
    Completion mode takes a local tokenizer folder (e.g. the served model's) for loglikelihood
    (multiple-choice) tasks; chat completions have none. Call from synchronous code or a thread."""
    model_args = _model_args(base_url, model, chat, tokenizer, num_concurrent, max_retries, timeout_s, api_key_env,
                             "run_lm_eval_tasks")
    manager = task_manager(include) if tasks else None
    done: dict[str, Any] = {}
    for task in tasks:
        try:
            with offline():
                out = _evaluate(manager, task, model_args, chat, limit, samples)
        except Exception as e:  # recorded with its name and cause (the traceback to the log); the caller decides
            done[task] = {"error": task_error(task, e)}
            log.warning("%s", done[task]["error"], exc_info=True)
            continue
        done[task] = _results(out)
        if samples:
            for name, rows in _samples(out).items():
                done[task]["results"].setdefault(name, {})["samples"] = rows
    return {"lm_eval_version": lm_eval_version(), "tasks": done}


def lm_eval_model(base_url: str, model: str, tasks: list[str] | tuple[str, ...], out_dir: str | os.PathLike, *,
                  include: str | os.PathLike | None = None, chat: bool, limit: int | None = None,
                  tokenizer: str | os.PathLike | None = None, num_concurrent: int = 8, timeout_s: int = 600,
                  api_key_env: str | None = None) -> dict[str, Any]:
    """The eval stage's lm-eval tasks on one served model, recorded in `out_dir`/lm_eval.json
    ({"key", "lm_eval_version", "served_as", "tasks": {name: result or {"error"}}}, in the order
    asked). A task recorded there without error under the same key (lm-eval's version, the include
    folder's task files, the limit, the mode) is kept, so a rerun runs only what is new or failed;
    the caller keeps the folder only while the model is the same (phi4ray.evals.models.graded_dir)."""
    path = Path(out_dir) / "lm_eval.json"
    key = {"lm_eval": lm_eval_version(), "include": include_digest(include), "limit": limit,
           "mode": "chat" if chat else "completion"}
    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = {t: r for t, r in old.get("tasks", {}).items() if old.get("key") == key and "error" not in r}
    todo = [t for t in tasks if t not in kept]
    new = run_lm_eval_tasks(base_url, model, todo, include=include, chat=chat, limit=limit, tokenizer=tokenizer,
                            num_concurrent=num_concurrent, timeout_s=timeout_s, api_key_env=api_key_env)["tasks"]
    record = {"key": key, "lm_eval_version": key["lm_eval"], "served_as": model,
              "tasks": {t: new[t] if t in new else kept[t] for t in tasks}}
    atomic_write(path, json.dumps(record, indent=1))
    return record
