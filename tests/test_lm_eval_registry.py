"""lm-evaluation-harness's own registry in the eval stage (`eval.lm_eval_tasks`): the settings
checked, an unknown task name refused before Ray starts, and a model's tasks run, recorded,
summarized and reported, against a scripted OpenAI-compatible server on loopback (no Ray, no
vLLM; the real endpoint: tests/test_eval_stage.py).

The user's task is written here as a user would write one: a YAML naming its local JSONL with
`dataset_path: json` and `data_files`, its own filters and metric."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from phi4ray.evals.config import EvalConfig
from phi4ray.evals.files import check_eval, eval_input_files
from phi4ray.evals.lm_eval_task import lm_eval_model
from phi4ray.evals.scores import lm_eval_counts, lm_eval_lines, lm_eval_summary
from phi4ray.presets import run_preset
from phi4ray.run.errors import ConfigError
from phi4ray.run.report import lm_eval_table
from tests.test_evals import Scripted

CAPITALS = [{"country": "France", "capital": "Paris"}, {"country": "Peru", "capital": "Lima"},
            {"country": "Chad", "capital": "N'Djamena"}]


def write_user_task(folder: Path, task: str, rows: list[dict], body: str) -> Path:
    """`folder`/<task>.yaml and its data, <task>.jsonl, as a user writes a task on local files: the
    packaged `json` builder reading `data_files` (cached in the folder), then the task's `body`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{task}.yaml").write_text(f"""\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / f"{task}.jsonl"}
  cache_dir: {folder / "hf_cache"}
test_split: test
""" + body)
    return folder


def user_task_folder(folder: Path, rows: list[dict], *, task: str = "my_capitals", max_gen_toks: int = 8) -> Path:
    """A hand-written generate_until task: a prompt per row, the capital as target, exact match
    after two filters (the first word of the answer; the answer as it is)."""
    return write_user_task(folder, task, rows, f"""\
output_type: generate_until
doc_to_text: "Q: What is the capital of {{{{country}}}}?\\nA:"
doc_to_target: "{{{{capital}}}}"
generation_kwargs:
  until: ["\\n", "<|im_end|>", "<|endoftext|>"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
  temperature: 0.0
filter_list:
  - name: first-word
    filter:
      - function: regex
        regex_pattern: "(\\\\w+)"
      - function: take_first
  - name: whole
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
metadata:
  version: 2.0
""")


@pytest.fixture(scope="module")
def capitals_tasks(tmp_path_factory) -> Path:
    """One include folder for this module's tests: lm-eval's registry is indexed once per folder."""
    return user_task_folder(tmp_path_factory.mktemp("lm_eval_tasks"), CAPITALS)


def prompt(row: dict) -> str:
    return f"Q: What is the capital of {row['country']}?\nA:"


@pytest.mark.parametrize("change, needle", [
    ({"lm_eval_include": "/nonexistent/tasks"}, "eval.lm_eval_include='/nonexistent/tasks' is not a folder"),
    ({"lm_eval_limit": -1}, "eval.lm_eval_limit=-1 must be >= 0"),
    ({"lm_eval_mode": "chatty"}, "eval.lm_eval_mode='chatty'"),
])
def test_lm_eval_settings_are_checked(change, needle):
    with pytest.raises(ConfigError) as e:
        EvalConfig(**change)
    assert needle in str(e.value)
    # lm-eval tasks alone are something to evaluate; their mode follows eval.mode unless given
    assert EvalConfig(suites=(), lm_eval_tasks=("gsm8k",), mode="completion").lm_eval_chat is False
    assert EvalConfig(lm_eval_tasks=("gsm8k",), mode="completion", lm_eval_mode="chat").lm_eval_chat is True
    # the suites' grades do not depend on lm-eval's settings: another task keeps them
    assert EvalConfig().grading() == EvalConfig(lm_eval_tasks=("gsm8k",), lm_eval_limit=5).grading()


def test_unknown_lm_eval_task_fails_before_ray_naming_close_matches(capitals_tasks, tmp_path, capsys):
    """The registry check is the eval stage's `check`: `phi4ray eval` refuses a typo before any Ray
    or engine starts, naming it and the names it is close to (the user's and lm-eval's own)."""
    import ray  # deferred: only to see that nothing started it

    from jobs.cli import main
    tasks = capitals_tasks
    cfg = dataclasses.replace(run_preset("tiny"), eval=EvalConfig(lm_eval_tasks=("my_capitals", "gsm8k"),
                                                                  lm_eval_include=str(tasks)))
    t0 = time.monotonic()
    check_eval(cfg, tmp_path, {})  # the user's task by its name, a built-in one by its: both known
    print(f"\nlm-eval registry index (built-in tasks + include folder): {time.monotonic() - t0:.1f}s")
    assert eval_input_files(cfg) == [str(tasks / "my_capitals.yaml")]  # a changed task definition reruns eval
    with pytest.raises(ConfigError, match="eval.lm_eval_include without eval.lm_eval_tasks"):
        check_eval(dataclasses.replace(cfg, eval=EvalConfig(lm_eval_include=str(tasks))), tmp_path, {})
    argv = ["eval", "--run-dir", str(tmp_path / "run"), f"eval.lm_eval_include={tasks}",
            "eval.lm_eval_tasks=my_capital,gsm8k,gsm8kk,zzqqxx"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config error: eval.lm_eval_tasks: unknown task(s) ['my_capital', 'gsm8kk', 'zzqqxx']" in err
    assert "'my_capital': did you mean my_capitals?" in err and "'gsm8kk': did you mean gsm8k," in err
    assert "'zzqqxx': nothing close" in err
    assert not ray.is_initialized()


def test_lm_eval_tasks_are_recorded_per_model_summarized_and_resumed(capitals_tasks, tmp_path, monkeypatch):
    """One model's tasks by name: the user's local task scored under both its filters, a built-in
    task whose data set is not on this machine recorded with the fix (the other still ran); the
    summary rows, console lines, counts and report table; a rerun asks only for the failed task."""
    tasks = capitals_tasks
    answers = {"France": " Paris, of course", "Peru": " lima", "Chad": " Abuja"}
    server = Scripted({prompt(r): (lambda call, body, t=answers[r["country"]]: (200, [t])) for r in CAPITALS})
    monkeypatch.setenv("PHI4RAY_TEST_LM_KEY", "k-123")
    out = tmp_path / "eval" / "sft"
    out.mkdir(parents=True)
    try:
        record = lm_eval_model(server.url, "phi4ray-sft", ["my_capitals", "gsm8k"], out, include=tasks, chat=False,
                               num_concurrent=2, api_key_env="PHI4RAY_TEST_LM_KEY")
        assert server.requests() == 3 and all(b["model"] == "phi4ray-sft" for b in server.bodies)
        assert {h.get("Authorization") for h in server.headers} == {"Bearer k-123"}  # the key named, from the env
        assert all(b["temperature"] == 0.0 and b["max_tokens"] == 8 for b in server.bodies)
        assert json.loads((out / "lm_eval.json").read_text()) == record and list(record["tasks"]) == ["my_capitals", "gsm8k"]
        mine = record["tasks"]["my_capitals"]
        assert mine["n"] == 3 and set(mine["results"]) == {"my_capitals"}
        got = mine["results"]["my_capitals"]
        # every filter's metric: the first word matches for France and Peru (case ignored), the whole
        # answer never (its leading space)
        assert got["metrics"]["exact_match,first-word"] == pytest.approx(2 / 3)
        assert got["metrics"]["exact_match,whole"] == 0.0
        assert got["metrics"]["exact_match_stderr,first-word"] > 0
        assert got["n"] == 3 and got["version"] == 2.0 and len(got["config_sha"]) == 16
        error = record["tasks"]["gsm8k"]["error"]
        assert "'gsm8k': its data set is not on this machine" in error and "openai/gsm8k" in error
        assert "data_files" in error and "eval.lm_eval_include" in error
        assert record["lm_eval_version"] == "0.4.13" and record["served_as"] == "phi4ray-sft"

        summary = lm_eval_summary({"sft": record}, tmp_path / "eval" / "lm_eval.json")
        assert [(r["task"], r["metric"], r["filter"], r["n"]) for r in summary["rows"]] == [
            ("my_capitals", "exact_match", "first-word", 3), ("my_capitals", "exact_match", "whole", 3)]
        assert summary["errors"] == [{"model": "sft", "task": "gsm8k", "error": error}]
        lines = lm_eval_lines(summary)
        assert lines[:2] == ["lm-eval sft: my_capitals exact_match,first-word 0.667 ± 0.333 (n 3)",
                             "lm-eval sft: my_capitals exact_match,whole 0.000 ± 0.000 (n 3)"]
        assert lines[2] == f"lm-eval sft: {error}"
        counts = lm_eval_counts(summary, ("my_capitals", "gsm8k"))
        assert counts["lm_eval_tasks"] == 2 and counts["lm_eval_errors"] == 1
        assert counts["lm_eval"] == {"sft": {"my_capitals": {"exact_match,first-word": pytest.approx(2 / 3),
                                                             "exact_match,whole": 0.0}}}
        table = "\n".join(lm_eval_table(tmp_path / "eval" / "lm_eval.json"))
        assert "| sft | my_capitals | exact_match,first-word | 0.6667 ± 0.3333 | 3 |" in table
        assert "- failed on sft: lm-eval task 'gsm8k'" in table

        # a rerun (the stage failed on gsm8k) keeps the finished task and tries the failed one again
        again = lm_eval_model(server.url, "phi4ray-sft", ["my_capitals", "gsm8k"], out, include=tasks, chat=False)
        assert server.requests() == 3 and again["tasks"]["my_capitals"] == mine and "error" in again["tasks"]["gsm8k"]
        # ... another limit is another key: the task runs again. No key named: none sent (lm-eval's
        # default would send the user's OPENAI_API_KEY to our endpoint)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-user-secret")
        lm_eval_model(server.url, "phi4ray-sft", ["my_capitals"], out, include=tasks, chat=False, limit=2)
        assert server.requests() == 5 and not any("Authorization" in h for h in server.headers[3:])
    finally:
        server.close()


def user_choice_task(folder: Path, rows: list[dict], *, task: str = "my_choices") -> Path:
    """A hand-written multiple-choice (loglikelihood) task: rows of question, choices and the index
    of the right one, scored by accuracy."""
    return write_user_task(folder, task, rows, """\
output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
