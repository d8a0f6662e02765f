"""The eval stage: what it leaves in a run (checked on the e2e `phi4ray run`, which evaluates two
stage models side by side on the real Ray Serve + vLLM fleet), serving in turns, and
lm-evaluation-harness talking to the same kind of endpoint."""
import asyncio
import dataclasses
import json
import re
import time
from collections import Counter
from pathlib import Path
from statistics import mean

import pytest
from openai import OpenAI

from phi4ray.evals.config import EvalConfig
from phi4ray.evals.generators import BUILTIN_SUITES, arith_suite
from phi4ray.evals.jsonl import load_suite_jsonl
from phi4ray.evals.lm_eval_task import run_lm_eval, run_lm_eval_tasks, write_lm_eval_task
from phi4ray.evals.models import graded_dir, model_fingerprint
from phi4ray.evals.runner import grade, wilson_interval
from phi4ray.presets import run_preset
from phi4ray.run.errors import MissingInput, UserError
from phi4ray.run.report import write_report
from phi4ray.verify.oracles import math_equal
from tests.test_lm_eval_registry import prompt, user_choice_task, user_task_folder

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def check_eval_outputs(run_dir, stages, size: int) -> None:
    """What the eval stage leaves in a run dir (the e2e `phi4ray run` test calls this on its run:
    the stage serves every stage's model side by side on the real Ray Serve + vLLM fleet)."""
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == set(stages)
    for stage, per in summary.items():
        assert set(per) == set(run_preset("tiny").eval.suites)  # the e2e run's preset: benchmarks + toy suites
        for name, r in per.items():
            assert r["n"] + r["errors"] == r["n_items"] == size
            assert r["errors"] == 0  # our endpoint answered every request
            items = {item.id: item for item in load_suite_jsonl(run_dir / "eval" / "suites" / f"{name}.jsonl").items}
            records = {}  # the latest line per item wins (a resumed run appends)
            for line in (run_dir / "eval" / stage / f"{name}.jsonl").read_text().splitlines():
                records[json.loads(line)["id"]] = json.loads(line)
            assert records.keys() == items.keys() and len(items) == size
            assert all(rec["run"]["model"] == f"phi4ray-{stage}" for rec in records.values())
            # each grade is the item's oracle on the response recorded, and the score, its interval
            # and the reasons count those grades
            assert all(isinstance(rec["response"], str) and rec["error"] is None for rec in records.values())
            grades = {i: grade(items[i], rec["response"]) for i, rec in records.items()}
            assert {i: rec["correct"] for i, rec in records.items()} == {i: g.correct for i, g in grades.items()}
            assert r["reasons"] == dict(Counter(g.reason for g in grades.values()))
            correct = sum(g.correct for g in grades.values())
            assert r["correct"] == correct and r["accuracy"] == correct / size
            assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(correct, size))
    assert (run_dir / "report" / "eval_scores.png").stat().st_size > 1000
    done = json.loads((run_dir / "manifests" / "eval.json").read_text())
    assert done["counts"]["endpoint_errors"] == 0 and done["counts"]["models"] == len(stages)
    # the built-in suites as the model saw them, and the (larger) ones curation decontaminated against
    assert {p.name for p in (run_dir / "eval" / "suites").iterdir()} == {f"{n}.jsonl" for n in per}
    assert {p.name for p in (run_dir / "eval" / "decontam").iterdir()} == {f"{n}.jsonl" for n in BUILTIN_SUITES}
    # an unchanged model keeps its grades: its fingerprint is the one recorded, the grading the same
    first = stages[0]
    grading = json.loads((run_dir / "eval" / first / "model.json").read_text())["grading"]
    fp = model_fingerprint(run_dir / "models" / first)
    assert fp == done["inputs"]["models"][first]
    assert (graded_dir(run_dir, first, fp, grading) / "arith.jsonl").is_file()
    # a retrained model (another file, another size or mtime) must not reuse the old grades
    stage = stages[-1]
    grading = json.loads((run_dir / "eval" / stage / "model.json").read_text())["grading"]
    (run_dir / "models" / stage / "extra.txt").write_text("a new file changes the model's fingerprint")
    fp = model_fingerprint(run_dir / "models" / stage)
    assert fp != done["inputs"]["models"][stage]
    assert (run_dir / "eval" / stage / "arith.jsonl").is_file()
    assert not (graded_dir(run_dir, stage, fp, grading) / "arith.jsonl").exists()


def test_no_stage_model_at_all_fails_naming_the_setting(tmp_path):
    # deferred: the actors modules load Ray, which only these tests (marked ray) may pay for
    from actors.context import RunContext
    from actors.evals import stage as eval_stage

    cfg = run_preset("tiny")
    cfg = dataclasses.replace(cfg, eval=EvalConfig(models=("dpo",)))
    with RunContext.local(tmp_path, cfg) as ctx, pytest.raises(MissingInput, match="none of eval.models"):
        eval_stage.run(ctx)


@pytest.mark.parametrize("chat", [False, True])
def test_lm_eval_harness_runs_a_local_task_against_our_endpoint(sampler_app, tmp_path, chat):
    """lm-evaluation-harness's own `local-completions` / `local-chat-completions` models, one task
    from a local file, against the real Serve + vLLM endpoint (API key on, no hub access)."""
    task_yaml = write_lm_eval_task(arith_suite(seed=3, size=4), tmp_path / "task", max_gen_toks=16)
    m = run_lm_eval(sampler_app["url"] + "/v1", sampler_app["model_id"], task_yaml.parent, chat=chat,
                    api_key_env="PHI4RAY_TEST_API_KEY", num_concurrent=4, samples=True)
    assert m["n"] == 4 == len(m["samples"])  # every document went through the endpoint and came back scored
    # the harness's scores are those of the answers it got: its normalisation (case, ",", "$", " ")
    # for exact_match, phi4ray's oracle for oracle_match
    def norm(s: str) -> str:
        return re.sub(r"[,$ ]", "", s).lower()

    assert m["exact_match"] == pytest.approx(mean(norm(s["answer"]) == norm(s["target"]) for s in m["samples"]))
    assert m["oracle_match"] == pytest.approx(mean(math_equal(s["answer"], s["target"]) for s in m["samples"]))
    if not chat:  # ... and the answers are the served model's own greedy completions of the task's prompts
        client = OpenAI(base_url=sampler_app["url"] + "/v1", api_key=sampler_app["key"], timeout=120)
        for s in m["samples"]:
            direct = client.completions.create(model=sampler_app["model_id"], prompt=s["prompt"], max_tokens=16,
                                               temperature=0, stop=["<|im_end|>", "<|endoftext|>"])
            assert s["response"] == direct.choices[0].text


@pytest.fixture(scope="module")
def user_tasks(sampler_app, tmp_path_factory):
    """A folder of hand-written local-file lm-eval tasks, as a user would bring them, on prompts
    whose greedy answers the served model gave first: the capital task's target is the first word
    of that answer for two of four prompts (in completion and in chat mode, one task each), so its
    first-word exact match is 1/2 by construction; plus a three-question multiple-choice task."""
    folder = tmp_path_factory.mktemp("user_tasks")
    client = OpenAI(base_url=sampler_app["url"] + "/v1", api_key=sampler_app["key"], timeout=120)
    countries = ["France", "Peru", "Chad", "Japan"]
    stops = ["\n", "<|im_end|>", "<|endoftext|>"]
    answers = {}
    for mode in ("completion", "chat"):
        for c in countries:
            q = prompt({"country": c})
            if mode == "chat":
                answers[mode, c] = client.chat.completions.create(
                    model=sampler_app["model_id"], messages=[{"role": "user", "content": q}], max_tokens=8,
                    temperature=0, stop=stops).choices[0].message.content
            else:
                answers[mode, c] = client.completions.create(model=sampler_app["model_id"], prompt=q, max_tokens=8,
                                                             temperature=0, stop=stops).choices[0].text
        rows = [{"country": c, "capital": (re.search(r"\w+", answers[mode, c]) or ["[invalid]"])[0] if i < 2
                 else "not-what-it-said"} for i, c in enumerate(countries)]
        user_task_folder(folder, rows, task=f"user_capitals_{mode}")
    user_choice_task(folder, [{"question": "Which colour is the sky?", "choices": [" blue", " green", " red"], "answer": 0},
                              {"question": "How many legs has a spider?", "choices": [" 6", " 8"], "answer": 1},
                              {"question": "Closest planet to the Sun?", "choices": [" Venus", " Mercury"], "answer": 1}],
                     task="user_choices")
    return {"folder": folder, "answers": answers, "stops": stops}


@pytest.mark.parametrize("chat", [False, True])
def test_lm_eval_registry_runs_user_tasks_by_name_against_our_endpoint(sampler_app, user_tasks, chat):
    """`eval.lm_eval_tasks`' path: tasks by name from lm-eval's registry (its built-in tasks plus the
    user's include folder) against the real Serve + vLLM endpoint, offline. The user's local task
    is scored on every filter as its answers imply; a built-in task resolves by name, and without
    its data set on this machine fails alone, named, with the fix. Completion mode gets the model
    folder's tokenizer, as the stage gives it, so a multiple-choice (loglikelihood) task runs too."""
    mode = "chat" if chat else "completion"
    gen = f"user_capitals_{mode}"
    names = [gen, "gsm8k"] + ([] if chat else ["user_choices"])
    out = run_lm_eval_tasks(sampler_app["url"] + "/v1", sampler_app["model_id"], names, include=user_tasks["folder"],
                            chat=chat, tokenizer=None if chat else sampler_app["folder"],
                            api_key_env="PHI4RAY_TEST_API_KEY", num_concurrent=4, samples=True)
    assert list(out["tasks"]) == names
    r = out["tasks"][gen]["results"][gen]
    assert r["n"] == 4 == out["tasks"][gen]["n"]
    samples = r["samples"]
    assert sorted(s["filter"] for s in samples) == ["first-word"] * 4 + ["whole"] * 4
    for filt in ("first-word", "whole"):  # each filter's score is the mean of its answers' exact matches
        rows = [s for s in samples if s["filter"] == filt]
        assert r["metrics"][f"exact_match,{filt}"] == pytest.approx(
            mean(s["filtered_resps"][0].lower() == s["target"].lower() for s in rows))
    # the answers are the served model's own greedy answers to the prompts: the first-word targets
    # were made from them for two of the four, so 1/2 exactly
    for s in samples:
        assert s["resps"][0][0] == user_tasks["answers"][mode, s["doc"]["country"]]
    assert r["metrics"]["exact_match,first-word"] == 0.5
    assert "'gsm8k': its data set is not on this machine" in out["tasks"]["gsm8k"]["error"]
    if not chat:  # loglikelihood: each answer's accuracy is whether its right choice has the highest log-likelihood
        mc = out["tasks"]["user_choices"]["results"]["user_choices"]
        assert mc["n"] == 3
        picks = [max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) for s in mc["samples"]]
        assert all(ll < 0 for s in mc["samples"] for ll, _ in s["filtered_resps"])
        assert mc["metrics"]["acc,none"] == pytest.approx(mean(p == s["target"] for p, s in zip(picks, mc["samples"])))


def test_eval_stage_runs_lm_eval_tasks_on_each_served_model(sampler_app, user_tasks, tmp_path):
    """The stage's part: after a model's suites, while it is the one served, `eval.lm_eval_tasks`
    run in a thread beside the lanes' loop and are recorded per model (RUN/eval/<stage>/lm_eval.json);
    across models a row per task and metric (RUN/eval/lm_eval.json), console lines, counts and the
    report's table; a task whose data set is not local fails the stage only after everything else
    was recorded, naming it and the models. (The full `phi4ray run` carries no lm-eval task: the
    stage serves its models exactly as without one.)"""
    # deferred: the actors modules load Ray, which only these tests (marked ray) may pay for
    from actors.evals.stage import evaluate_lanes, record_lm_eval
    from actors.serve.fleet import App, Fleet

    mid, folder = sampler_app["model_id"], str(Path(sampler_app["folder"]).resolve())
    app = App(name=sampler_app["app"], url=sampler_app["url"] + "/v1", deployment=sampler_app["deployment"],
              model_id=mid, models={mid: sampler_app["deployment"]}, folders={mid: folder})
    models = {"init": Path(folder), "sft": Path(folder)}  # two stages' models in one folder: no swap between them
    out_dirs = {s: tmp_path / "eval" / s for s in models}
    for d in out_dirs.values():
        d.mkdir(parents=True)
    gen = "user_capitals_completion"
    e = EvalConfig(suites=(), mode="completion", concurrency=4, lm_eval_tasks=(gen, "gsm8k"),
                   lm_eval_include=str(user_tasks["folder"]))

    def evaluate(e) -> dict:
        records: dict[str, dict] = {}
        results = asyncio.run(evaluate_lanes(Fleet(None, None), [(app, mid, list(models))], models,
                                             {s: f"phi4ray-{s}" for s in models}, [], out_dirs, e,
                                             api_key_env="PHI4RAY_TEST_API_KEY", lm_eval=records))
        assert results == {"init": [], "sft": []}  # lm-eval tasks alone are an evaluation
        return records

    records = evaluate(e)
    for stage in models:
        rec = json.loads((out_dirs[stage] / "lm_eval.json").read_text())
        assert rec == records[stage] and rec["served_as"] == mid and rec["key"]["mode"] == "completion"
        assert rec["tasks"][gen]["results"][gen]["metrics"]["exact_match,first-word"] == 0.5
        assert "'gsm8k': its data set is not on this machine" in rec["tasks"]["gsm8k"]["error"]
    with pytest.raises(UserError) as failed:
        record_lm_eval(tmp_path, e, list(models), records)
    assert "2 lm-eval task run(s) failed" in str(failed.value) and "[model(s) init, sft]" in str(failed.value)
    summary = json.loads((tmp_path / "eval" / "lm_eval.json").read_text())
    assert [(r["model"], r["task"], r["filter"], r["n"]) for r in summary["rows"]] == [
        ("init", gen, "first-word", 4), ("init", gen, "whole", 4), ("sft", gen, "first-word", 4), ("sft", gen, "whole", 4)]
    assert [r["value"] for r in summary["rows"]][::2] == [0.5, 0.5]  # one model, one answer: the same scores
    assert summary["rows"][1]["value"] == summary["rows"][3]["value"]
    report = write_report(tmp_path, []).read_text()
    assert "| sft | user_capitals_completion | exact_match,first-word | 0.5 ± " in report
    assert "- failed on init: lm-eval task 'gsm8k'" in report
    # without the task that cannot run, the finished ones are kept (nothing sent again) and the stage completes
    t0 = time.monotonic()
    kept = evaluate(dataclasses.replace(e, lm_eval_tasks=(gen,)))
    assert time.monotonic() - t0 < 5 and all(kept[s]["tasks"][gen] == records[s]["tasks"][gen] for s in models)
    counts, outputs = record_lm_eval(tmp_path, dataclasses.replace(e, lm_eval_tasks=(gen,)), list(models), kept)
    assert counts["lm_eval_tasks"] == 1 and counts["lm_eval_errors"] == 0
    assert counts["lm_eval"]["sft"][gen]["exact_match,first-word"] == 0.5
    assert outputs == {"lm_eval": str(tmp_path / "eval" / "lm_eval.json")}
    # no lm-eval tasks any more: no stale table in the report
    assert record_lm_eval(tmp_path, EvalConfig(), list(models), {}) == ({}, {})
    assert "lm-evaluation-harness" not in write_report(tmp_path, []).read_text()


def test_models_are_served_in_turns_when_the_cluster_cannot_hold_them_all(ray_cluster, tmp_path):
    """Five stage models need 11 logical CPUs at once on CPU; a smaller cluster evaluates them in
    groups that fit instead of waiting forever for a replica that cannot be placed."""
    # deferred: the actors modules load Ray, which only these tests (marked ray) may pay for
    import ray

    from actors.context import RunContext
    from actors.evals.stage import model_groups

    stages = ["init", "pretrain", "midtrain", "sft", "dpo"]
    cfg = run_preset("tiny")
    two = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, models_at_once=2))
    with RunContext.local(tmp_path, cfg) as ctx:
        groups = model_groups(ctx, stages)
        assert [s for g in groups for s in g] == stages
        assert all(2 * len(g) + 1 <= max(3, ray.available_resources()["CPU"]) for g in groups)
    with RunContext.local(tmp_path, two) as ctx:
        assert model_groups(ctx, stages) == [["init", "pretrain"], ["midtrain", "sft"], ["dpo"]]
