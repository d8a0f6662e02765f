import json
import math
import os
import re
import signal
import subprocess
import sys

import pytest

from jobs.cli import main
from jobs.registry import STAGES
from phi4ray.presets import resolve_config, run_preset
from phi4ray.run.overrides import OverrideError, apply_overrides
from phi4ray.train.jobs import model_fingerprint
from phi4ray.train.metrics import read_metrics
from tests.test_eval_stage import check_eval_outputs

DESIGN_STAGES = ["curate", "synthesize", "tokenize", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2", "eval",
                 "serve"]


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for name in DESIGN_STAGES + ["run", "init"]:
        assert f"\n    {name}" in out
    assert [s.name for s in STAGES if s.name != "init"] == DESIGN_STAGES


def _run(argv: list[str], timeout: int) -> subprocess.CompletedProcess:
    """The CLI in its own process group, killed whole afterwards: if the run fails or times out,
    the Ray cluster and vLLM engines it started must not outlive it and starve later tests."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.timeout(1500)  # the one test that runs the whole product; the rest stay under 900 s
def test_run_tiny_end_to_end_then_rerun_is_a_no_op(tmp_path):
    """`phi4ray run --preset tiny` as a user runs it: every built stage, ending with the model
    served on Ray Serve + vLLM and a chat answered; the rerun skips what is complete."""
    from tests.conftest import free_port

    argv = [sys.executable, "-m", "jobs.cli", "run", "--preset", "tiny", "--run-dir", str(tmp_path),
            "model.n_layers=2", f"serve.port={free_port()}", "curate.builtin_docs=12",
            "curate.quality.annotate_docs=8", "synth.seeds=1", "synth.steps=rewrite,reversal", "eval.size=2",
            "eval.max_tokens=16", "eval.models=init,sft,dpo,dpo2",
            "pretrain.steps=4", "pretrain.checkpoint_every=2", "pretrain.log_every=2",
            "midtrain.train.steps=2", "midtrain.train.checkpoint_every=2", "midtrain.train.log_every=1",
            # enough SFT that the "name a prime" questions land in PTS's band (p ~ the teacher's 0.5;
            # 4 steps left p = 0 and no pair), so DPO trains on the run's own pairs. Measured on this
            # model: 30 steps of 4 rows keep 5 of the 6 prime queries of 12 and give ~10 pairs (20: ~4)
            "sft.problems=40", "sft.heldout=8", "sft.train.steps=30", "sft.train.batch_size=4",
            "sft.train.micro_batch_size=2", "sft.train.warmup_steps=2", "sft.train.min_lr_ratio=1.0",
            "sft.train.checkpoint_every=30", "sft.train.log_every=10",
            # best-of-N on the fleet: the barely pretrained start model answers (mostly cut off at
            # 24 tokens), its guided judge scores the rest, the toy oracle rules out wrong answers
            "sft.best_of_n=2", "sft.best_of_n_prompts=4", "sft.best_of_n_max_tokens=24",
            "pts.queries=12", "pts.samples_per_estimate=4", "pts.max_tokens=12",
            # round 2: toy questions answered 4 times by the round-1 model, room to finish (PTS's 12
            # tokens cut most answers off); its guided judge parses and the toy oracle decides accuracy
            "dpo.judge_prompts=12", "dpo.judge_responses=4", "dpo.judge_max_tokens=32",
            "dpo.train.micro_batch_size=1", "dpo.train.batch_size=2",
            "dpo.train.steps=2", "dpo.train.checkpoint_every=2", "dpo.train.log_every=1"]
    first = _run(argv, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    init = json.loads((tmp_path / "manifests" / "init.json").read_text())
    assert init["complete"] and init["config"]["model"]["n_layers"] == 2
    assert (tmp_path / "models" / "init" / "model.safetensors").is_file()
    for stage in ("curate", "synthesize", "tokenize", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2"):
        assert json.loads((tmp_path / "manifests" / f"{stage}.json").read_text())["complete"]
    assert (tmp_path / "tokens_midtrain" / "tokenize_record.json").is_file()  # midtraining's own mixture
    sft = json.loads((tmp_path / "manifests" / "sft.json").read_text())["counts"]
    bon = sft["best_of_n"]
    assert bon["prompts_in"] == 4 == bon["kept"] + sum(bon["skipped"].values()), bon  # kept > 0: the smol run
    assert sft["conversations"] == 40 + bon["kept"] and sft["heldout_loss_after"] < sft["heldout_loss_before"]
    pts = json.loads((tmp_path / "manifests" / "pts.json").read_text())["counts"]
    assert pts["queries"] == 12 == pts["kept"] + pts["too_easy"] + pts["too_hard"] and pts["samples"] > 0
    assert pts["kept"] >= 1 and pts["pairs"] >= 2
    # DPO trained on the run's own pairs, FSDP2 over 2 Ray Train workers (1 vs 2 workers: tests/test_dpo_workers.py)
    dpo = json.loads((tmp_path / "manifests" / "dpo.json").read_text())["counts"]
    assert dpo["train_pairs"] + dpo["heldout_pairs"] == pts["pairs"] and dpo["train_pairs"] >= 2
    steps = read_metrics(tmp_path, "dpo")
    assert [m["step"] for m in steps] == [1, 2] and {m["world_size"] for m in steps} == {2}
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["reward_margin"]) and m["step_tokens"] > 0 for m in steps)
    assert (tmp_path / "models" / "dpo" / "model.safetensors").is_file()
    assert (dpo["heldout_margin_before"] is not None) == (dpo["heldout_pairs"] > 0)  # measured where pairs were held out
    print(f"\ne2e dpo: {dpo}; steps {steps}")
    # round 2: judged pairs from the round-1 model, DPO from it into models/dpo2
    dpo2 = json.loads((tmp_path / "manifests" / "dpo2.json").read_text())["counts"]
    judged = dpo2["judge_round"]
    assert judged["prompts_in"] == 12 == judged["pairs"] + sum(judged["no_pair"].values())
    assert judged["policies"] == ["dpo"] and judged["judge_calls"] > 0
    assert dpo2["train_pairs"] + dpo2["heldout_pairs"] == judged["pairs"] and dpo2["train_pairs"] >= 2, dpo2
    assert [m["step"] for m in read_metrics(tmp_path, "dpo2")] == [1, 2]
    assert json.loads((tmp_path / "models" / "dpo2" / "config.json").read_text())
    ref = json.loads((tmp_path / "dpo2" / "train_ref" / "reference_key.json").read_text())
    assert ref["model"] == model_fingerprint(tmp_path / "models" / "dpo")  # the reference is round 1's model
    print(f"e2e dpo2: {dpo2}")
    # the organic data came through curate (the built-in raw corpus of this machine's files), and
    # the mixture read it from there, not from the fallback corpus
    curate = json.loads((tmp_path / "curate" / "stats.json").read_text())
    assert curate["read"] == curate["kept"] + curate["dropped"] + curate["quarantined"] and curate["kept"] > 0
    mix = json.loads((tmp_path / "manifests" / "tokenize.json").read_text())["inputs"]["mixture"]["sources"]
    assert {p for s in mix for p in s["paths"]} >= {"curated/web", "curated/code"}
    synth = json.loads((tmp_path / "synthesize" / "report.json").read_text())
    assert set(synth["steps"]) == {"rewrite", "reversal"}  # every step: tests/test_synthesize_stage.py
    report = (tmp_path / "report" / "index.md").read_text()
    assert all(f"| {s.name} |" in report for s in STAGES if s.name != "serve")
    mid = json.loads((tmp_path / "models" / "midtrain" / "config.json").read_text())
    assert mid["rope_theta"] == 250_000 and mid["max_position_embeddings"] == 1024
    assert (tmp_path / "report" / "loss_pretrain.png").is_file()
    served = json.loads((tmp_path / "manifests" / "serve.json").read_text())
    assert served["inputs"]["model"] == str((tmp_path / "models" / "dpo2").resolve())
    # one fleet from pts through eval to serve: eval's lane ending on dpo ran on it, serve found it up
    assert served["counts"]["fleet_reused"] is True
    assert isinstance(served["outputs"]["smoke_answer"], str) and served["outputs"]["smoke_answer"]  # tiny model: any text
    assert "smoke chat" in first.stdout
    # the console: a start and a finish line per stage, Ray's and vLLM's logs in RUN/logs/ instead
    for s in STAGES:
        assert f"[{s.name:>10}] start" in first.stdout and f"[{s.name:>10}] done in" in first.stdout
        assert (tmp_path / "logs" / f"{s.name}.log").is_file()
    assert "dashboard http" in first.stdout and len(first.stdout.splitlines()) < 80, first.stdout
    streamed = re.compile(r"pid=\d+(, ip=[\d.]+)?\)")  # Ray's prefix of worker output copied to the driver
    assert not streamed.search(first.stdout + first.stderr)
    assert streamed.search((tmp_path / "logs" / "pts.log").read_text())  # ... it went to the stage's log
    again = _run(argv, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete") == len(STAGES)  # serve too: its smoke answer is on record
    assert json.loads((tmp_path / "manifests" / "init.json").read_text())["finished_at"] == init["finished_at"]
    # eval: every stage model graded on every suite
    check_eval_outputs(tmp_path, ["init", "sft", "dpo", "dpo2"], size=2)
    # another eval size or model list reruns eval alone: tests/test_stage.py (keys) and tests/test_eval_stage.py


@pytest.mark.parametrize("argv, needle", [
    (["init", "--preset", "huge"], "unknown preset 'huge'"),
    (["init", "model.n_heads=3"], "model.n_heads=3"),
    (["init", "model.nope=1"], "unknown config key 'model.nope'"),
    (["init", "seed=abc"], "seed='abc': not a valid int"),
    (["init", "export_dtype=int8"], "export_dtype='int8'"),
    (["init", "model"], "key=value"),
    (["serve", "serve.device=tpu"], "serve.device='tpu'"),
    (["serve", "serve.min_replicas=3"], "min_replicas"),
    (["run", "stages=init,nope"], "unknown stage(s) ['nope']"),
])
def test_bad_config_fails_before_work(argv, needle, tmp_path, capsys):
    assert main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_overrides_convert_types():
    cfg = apply_overrides(run_preset("tiny"), ["model.rope_theta=250000", "model.tie_embeddings=false", "seed=7"])
    assert cfg.model.rope_theta == 250_000.0 and cfg.model.tie_embeddings is False and cfg.seed == 7
    with pytest.raises(OverrideError):
        apply_overrides(cfg, ["model.tie_embeddings=maybe"])


def test_relative_run_dir_is_made_absolute(tmp_path, monkeypatch):
    # Ray workers run in their own working directories: a relative RUN must never reach them
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--run-dir", "rel/run", "model.n_layers=1"]) == 0
    out = json.loads((tmp_path / "rel" / "run" / "manifests" / "init.json").read_text())["outputs"]["model"]
    assert out == str(tmp_path / "rel" / "run" / "models" / "init")


@pytest.mark.parametrize("preset", ["tiny", "smol", "small", "phi4-14b"])
def test_config_file_round_trips_every_preset(preset, tmp_path, capsys):
    """`phi4ray config` writes the preset as a file; reading it back gives the same config, and
    key=value arguments still win over the file."""
    assert main(["config", "--preset", preset]) == 0
    path = tmp_path / f"{preset}.conf"
    path.write_text(capsys.readouterr().out)
    assert resolve_config(None, str(path), []) == (preset, run_preset(preset))
    edited = path.read_text().replace("\npretrain.steps = ", "\npretrain.steps = 77  # edited\n# was ")
    path.write_text(edited)
    _, cfg = resolve_config(None, str(path), ["seed=5"])
    assert cfg.pretrain.steps == 77 and cfg.seed == 5 and cfg.model == run_preset(preset).model


@pytest.mark.parametrize("text, needle", [
    ("pretrain.steps = lots\n", "bad.conf: pretrain.steps='lots': not a valid int"),
    ("# fine\nmodel.dim 64\n", "bad.conf:2: 'model.dim 64' is not `key = value`"),
    ("model.nope = 1\n", "unknown config key 'model.nope'"),
    ("preset = small\n", "--preset tiny but"),
])
def test_bad_config_file_fails_naming_the_line(text, needle, tmp_path, capsys):
    (tmp_path / "bad.conf").write_text(text)
    assert main(["init", "--preset", "tiny", "--config", str(tmp_path / "bad.conf"), "--run-dir", str(tmp_path / "r")]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "r").exists()
