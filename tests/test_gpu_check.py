"""benchmarks/gpu_check.py in its CPU mode (tiny shapes): every section runs and passes, and the script
imports neither Ray, vLLM nor transformers (the lent GPU machine has none of them)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    # one thread: on a shared 2-core machine two OpenMP threads can wait on each other for tens of seconds
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--steps", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["ok"] and r["tiny"] and r["device"] == "cpu" and r["preset"].startswith("tiny")
    assert r["forbidden_imports"] == []
    assert "ALL PASS" in proc.stdout and '"train"' in proc.stdout  # the table and the JSON both printed

    train, long = r["train"], r["long_step"]
    for s in (train, long):
        assert s["ok"] and s["dtype"] == "float32"
        assert math.isfinite(s["tokens_per_s"]) and s["tokens_per_s"] > 0 and math.isfinite(s["loss"])
        assert s["docs_per_row"] > 1 and s["loss_chunks"] > 1  # document masking and the chunked loss both ran
    assert long["seq_len"] > train["seq_len"]
    assert long["peak_memory"].startswith("process peak RSS") and long["peak_gib"] > 0

    attn = r["attention"]
    assert attn["ok"] and attn["dtype"] == "float32"
    plans = attn["plans"]
    assert plans["SegmentDocuments"]["backward"]  # the CPU training path: forward and q/k/v grads
    assert set(plans["SegmentDocuments"]["max_abs_err"]) == {"out", "dq", "dk", "dv"}
    flex = [p for name, p in plans.items() if name.startswith("FlexDocuments")]
    assert len(flex) == 1 and not flex[0]["backward"]  # flex has no CPU backward: forward only
    for p in plans.values():
        assert p["ok"] and all(0 <= e < 1e-4 for e in p["max_abs_err"].values())
