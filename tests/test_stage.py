"""The stage contract and its runner: content keys, skips, missing inputs, failures, and a stage
added as one file plus one registry entry."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from jobs import registry
from jobs.cli import build_parser, main
from phi4ray.presets import run_preset
from phi4ray.run import manifest
from phi4ray.run.errors import MissingInput
from phi4ray.run.overrides import apply_overrides
from phi4ray.run.stage import Stage, StageFailed, StageResult, run_stage, stage_key
from tests import example_stage

BY_NAME = {s.name: s for s in registry.STAGES}


def _ctx(run_dir: Path, *overrides: str):
    return SimpleNamespace(run_dir=run_dir, cfg=apply_overrides(run_preset("tiny"), list(overrides)), options={})


def _complete(run_dir: Path, *names: str) -> None:
    for name in names:
        manifest.write_manifest(run_dir, name, {}, key=f"key-of-{name}", inputs={}, outputs={}, counts={}, timings={})


def _complete_current(run_dir: Path, cfg, *names: str) -> None:
    """Manifests under the keys the stages have for `cfg`, in pipeline order (as a run leaves them)."""
    for s in registry.STAGES:
        if s.name in names:
            manifest.write_manifest(run_dir, s.name, {}, key=stage_key(s, cfg, run_dir), inputs={}, outputs={},
                                    counts={}, timings={})


def test_every_registered_stage_declares_what_it_depends_on():
    cfg = run_preset("tiny")
    names = [s.name for s in registry.STAGES]
    assert len(set(names)) == len(names)
    for i, s in enumerate(registry.STAGES):
        assert s.sections and s.summary and callable(s.run)
        stage_key(s, cfg, Path("/nonexistent"))  # every declared section path exists in the config
        assert set(s.reads) | set(s.uses) <= set(names[:i]), f"{s.name} reads a stage that runs after it"


@pytest.mark.parametrize("change", [("eval.size=20",), ("eval.size=3", "eval.models=init")])
def test_a_section_of_another_stage_changes_only_that_stage(tmp_path, change):
    """A new eval size or model list reruns eval alone (what a user changes most between runs)."""
    _complete(tmp_path, *(s.name for s in registry.STAGES))
    before, after = _ctx(tmp_path), _ctx(tmp_path, *change)
    changed = {s.name for s in registry.STAGES
               if stage_key(s, before.cfg, tmp_path) != stage_key(s, after.cfg, tmp_path)}
    assert changed == {"eval"}


def test_a_changed_stage_changes_the_key_of_every_stage_that_reads_it(tmp_path):
    _complete(tmp_path, *(s.name for s in registry.STAGES))
    cfg = run_preset("tiny")
    keys = {s.name: stage_key(s, cfg, tmp_path) for s in registry.STAGES}
    # pretrain reran under a new key (pretrain.steps raised): what reads it, directly or through
    # a stage that does, has a new key once the upstream manifest changes
    manifest.write_manifest(tmp_path, "pretrain", {}, key="a-new-pretrain", inputs={}, outputs={}, counts={}, timings={})
    assert stage_key(BY_NAME["midtrain"], cfg, tmp_path) != keys["midtrain"]
    assert stage_key(BY_NAME["tokenize"], cfg, tmp_path) == keys["tokenize"]
    assert stage_key(BY_NAME["curate"], cfg, tmp_path) == keys["curate"]


def test_runner_skips_a_complete_stage_and_reruns_on_a_new_key(tmp_path, capsys):
    calls = []

    def run(ctx):
        calls.append(ctx.cfg.seed)
        return StageResult(counts={"n": len(calls)})

    stage = Stage(name="probe", summary="s", run=run, sections=("seed",), headline=("n",), needs_ray=False)
    m, ran = run_stage(stage, _ctx(tmp_path))
    assert ran and m["complete"] and m["counts"] == {"n": 1} and m["config"] == {"seed": 0}
    assert "total_s" in m["timings"] and (tmp_path / "report" / "index.md").is_file()
    _, ran = run_stage(stage, _ctx(tmp_path))
    assert not ran and calls == [0]
    assert "[     probe] already complete" in capsys.readouterr().out
    _, ran = run_stage(stage, _ctx(tmp_path, "seed=3"))
    assert ran and calls == [0, 3]


def test_a_stage_whose_inputs_are_missing_is_refused_naming_the_stage_to_run_first(tmp_path):
    called = []
    stage = Stage(name="later", summary="s", run=lambda ctx: called.append(1), sections=("seed",), reads=("init",))
    with pytest.raises(MissingInput, match="run `phi4ray init` first"):
        run_stage(stage, _ctx(tmp_path))
    assert not called and not (tmp_path / "manifests").exists()


def test_a_failing_stage_is_not_complete(tmp_path):
    def run(ctx):
        raise ZeroDivisionError("boom")

    stage = Stage(name="broken", summary="s", run=run, sections=("seed",))
    with pytest.raises(StageFailed, match="stage broken failed: ZeroDivisionError: boom"):
        run_stage(stage, _ctx(tmp_path))
    assert manifest.read_manifest(tmp_path, "broken") is None
    assert "| broken | not run |" in (tmp_path / "report" / "index.md").read_text()


def test_pretrain_on_a_fresh_run_dir_fails_in_one_line_before_ray(tmp_path, capsys):
    assert main(["pretrain", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"phi4ray: error: pretrain reads the output of `init`, which has not run in {tmp_path}: "
                   "run `phi4ray init` first (or `phi4ray run`)")
    assert not (tmp_path / "manifests").exists()


@pytest.mark.parametrize("argv, needle", [
    (["serve", "--model", "/nonexistent/model"], "serve --model: /nonexistent/model is not a folder"),
    (["pretrain", "pretrain.lr=-1"], "pretrain.lr=-1: train.lr=-1.0 must be > 0"),
    (["init", "curate.inputs=web=/nonexistent/crawl", "model.n_layers=1"], None),  # init does not read them
])
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys):
    if needle is None:  # a stage is checked for what it reads, not for every stage's inputs
        assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 0
        return
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_missing_curation_input_is_one_line_before_ray(tmp_path, capsys):
    assert main(["curate", "curate.inputs=web=/nonexistent/crawl", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/crawl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "manifests").exists()


def test_a_batch_smaller_than_the_workers_is_refused_before_any_worker(tmp_path, capsys):
    argv = ["pretrain", "--run-dir", str(tmp_path), "train_workers=9", "pretrain.batch_size=8",
            "pretrain.micro_batch_size=4"]
    _complete_current(tmp_path, apply_overrides(run_preset("tiny"), argv[3:]), "init", "tokenize")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "batch_size=8 leaves some of 9 workers without a row" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ray_train").exists()


def test_verbose_adds_the_traceback(tmp_path, capsys):
    assert main(["serve", "--model", "/nonexistent/model", "--verbose", "--run-dir", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_new_stage_is_one_file_and_one_registry_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "STAGES", [*registry.STAGES, example_stage.STAGE])
    run_dir = str(tmp_path)
    assert main(["model_card", "--run-dir", run_dir]) == 2  # reads init, which has not run
    assert "run `phi4ray init` first" in capsys.readouterr().err
    assert main(["init", "--run-dir", run_dir, "model.n_layers=1"]) == 0
    assert main(["model_card", "--run-dir", run_dir, "model.n_layers=1"]) == 0
    assert "[model_card] done in" in capsys.readouterr().out
    assert (tmp_path / "model_card.md").read_text().startswith("# tiny\n\n1 layers")
    m = json.loads((tmp_path / "manifests" / "model_card.json").read_text())
    assert m["counts"] == {"layers": 1} and m["inputs"]["stages"]["init"]
    assert "| model_card |" in (tmp_path / "report" / "index.md").read_text()
    assert main(["model_card", "--run-dir", run_dir, "model.n_layers=1", "eval.size=20"]) == 0
    assert "[model_card] already complete" in capsys.readouterr().out
    assert "model_card" in build_parser().format_help()


def test_a_stage_whose_input_ran_under_another_config_is_refused(tmp_path, capsys):
    """pretrain alone with another model shape than init's: the init model would not fit it."""
    assert main(["init", "model.n_layers=1", "--run-dir", str(tmp_path)]) == 0
    _complete_current(tmp_path, run_preset("tiny"), "tokenize")
    capsys.readouterr()
    assert main(["pretrain", "model.n_layers=2", "--run-dir", str(tmp_path)]) == 2
    assert "reads the output of `init`, which ran under another config" in capsys.readouterr().err
