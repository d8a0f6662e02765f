"""The eval stage: what it leaves in a run (checked on the e2e `phi4ray run`, which evaluates two
stage models side by side on the real Ray Serve + vLLM fleet), serving in turns, and
lm-evaluation-harness talking to the same kind of endpoint."""
import dataclasses
import json
import re
from collections import Counter
from statistics import mean

import pytest
from openai import OpenAI

from phi4ray.evals.config import EvalConfig
from phi4ray.evals.generators import BUILTIN_SUITES, arith_suite
from phi4ray.evals.jsonl import load_suite_jsonl
from phi4ray.evals.lm_eval_task import run_lm_eval, write_lm_eval_task
from phi4ray.evals.models import graded_dir, model_fingerprint
from phi4ray.evals.runner import grade, wilson_interval
from phi4ray.presets import run_preset
from phi4ray.run.errors import MissingInput
from phi4ray.verify.oracles import math_equal

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
