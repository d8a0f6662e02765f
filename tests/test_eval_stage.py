"""The eval stage end to end: every stage's model served side by side on the real Ray Serve + vLLM
fleet, the built-in suites sent over HTTP, graded, summarised, plotted; and lm-evaluation-harness
talking to the same kind of endpoint."""
import dataclasses
import json
import shutil

import pytest

from phi4ray.evals.config import EvalConfig
from phi4ray.presets import run_preset

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


@pytest.fixture(scope="module")
def eval_run(ray_cluster, tiny_export, tmp_path_factory):
    from actors.eval_stage import run_eval

    run_dir = tmp_path_factory.mktemp("eval_run")
    for stage in ("init", "sft"):  # two "stages": the same weights under two names
        shutil.copytree(tiny_export, run_dir / "models" / stage)
    port = int(ray_cluster["http"].rsplit(":", 1)[1])
    cfg = run_preset("tiny")
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, port=port, max_model_len=512),
                              eval=EvalConfig(size=3, max_tokens=24, models=("init", "sft", "dpo")))
    return run_dir, cfg, run_eval(run_dir, cfg)


def test_eval_scores_every_stage_model_on_every_suite(eval_run):
    run_dir, cfg, done = eval_run
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == {"init", "sft"}  # dpo has no model folder yet: skipped, not failed
    for stage, per in summary.items():
        assert set(per) == {"arith", "choice", "code", "ifeval"}
        for name, r in per.items():
            assert r["n"] + r["errors"] == r["n_items"] == 3
            assert r["errors"] == 0  # our endpoint answered every request
            assert 0.0 <= r["ci_low"] <= (r["accuracy"] or 0.0) <= r["ci_high"] <= 1.0
            records = [json.loads(x) for x in (run_dir / "eval" / stage / f"{name}.jsonl").read_text().splitlines()]
            assert len({r["id"] for r in records}) == 3 and all(isinstance(r["response"], str) for r in records)
            assert all(r["run"]["model"] == f"phi4ray-{stage}" for r in records)
    # same weights, greedy decoding: the two names must grade identically, item for item
    for name in summary["init"]:
        a = {r["id"]: r["correct"] for r in map(json.loads, (run_dir / "eval" / "init" / f"{name}.jsonl").read_text().splitlines())}
        b = {r["id"]: r["correct"] for r in map(json.loads, (run_dir / "eval" / "sft" / f"{name}.jsonl").read_text().splitlines())}
        assert a == b
    assert (run_dir / "report" / "eval_scores.png").stat().st_size > 1000
    assert done["counts"]["endpoint_errors"] == 0 and done["counts"]["models"] == 2
    # the built-in suites were written where curation's decontamination reads them
    assert {p.name for p in (run_dir / "eval" / "suites").iterdir()} == {"arith.jsonl", "choice.jsonl",
                                                                       "code.jsonl", "ifeval.jsonl"}


def test_eval_rerun_is_a_no_op_and_a_changed_model_is_scored_again(eval_run):
    from actors.eval_stage import run_eval

    run_dir, cfg, done = eval_run
    assert run_eval(run_dir, cfg)["finished_at"] == done["finished_at"]
    from actors.eval_stage import _stage_dir, model_fingerprint

    # a retrained model (another file, another size or mtime) must not reuse the old grades
    (run_dir / "models" / "sft" / "extra.txt").write_text("a new file changes the model's fingerprint")
    fp = model_fingerprint(run_dir / "models" / "sft")
    assert fp != done["inputs"]["models"]["sft"]
    assert (run_dir / "eval" / "sft" / "arith.jsonl").is_file()
    assert not (_stage_dir(run_dir, "sft", fp) / "arith.jsonl").exists()
    assert (run_dir / "eval" / "init" / "arith.jsonl").is_file()  # the unchanged model keeps its grades


@pytest.mark.parametrize("chat", [False, True])
def test_lm_eval_harness_runs_a_local_task_against_our_endpoint(sampler_app, tmp_path, chat):
    """lm-evaluation-harness's own `local-completions` / `local-chat-completions` models, one task
    from a local file, against the real Serve + vLLM endpoint (API key on, no hub access)."""
    from phi4ray.evals.lm_eval_task import run_lm_eval, write_lm_eval_task
    from phi4ray.evals.suites import arith_suite

    task_yaml = write_lm_eval_task(arith_suite(seed=3, size=4), tmp_path / "task", max_gen_toks=16)
    m = run_lm_eval(sampler_app["url"] + "/v1", sampler_app["model_id"], task_yaml.parent, chat=chat,
                    api_key_env="PHI4RAY_TEST_API_KEY", num_concurrent=4)
    assert m["n"] == 4  # every document went through the endpoint and came back scored
    assert 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["oracle_match"] <= 1.0


def test_models_are_served_in_turns_when_the_cluster_cannot_hold_them_all(ray_cluster):
    """Five stage models need 11 logical CPUs at once on CPU; a smaller cluster evaluates them in
    groups that fit instead of waiting forever for a replica that cannot be placed."""
    import ray

    from actors.eval_stage import model_groups

    stages = ["init", "pretrain", "midtrain", "sft", "dpo"]
    cfg = run_preset("tiny")
    groups = model_groups(stages, cfg)
    assert [s for g in groups for s in g] == stages
    assert all(2 * len(g) + 1 <= max(3, ray.available_resources()["CPU"]) for g in groups)
    two = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, models_at_once=2))
    assert model_groups(stages, two) == [["init", "pretrain"], ["midtrain", "sft"], ["dpo"]]
