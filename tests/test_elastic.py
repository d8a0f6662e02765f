"""Elastic pretraining: remove a node mid-run, then add one (see tests/elastic_run.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_node_loss_resumes_on_fewer_workers_and_scales_back(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.elastic_run", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is None
    m = out["metrics"]
    sizes = [x["world_size"] for x in m]
    # 2 workers, then 1 after the node went, then 2 again after a node came back
    first_one = sizes.index(1)
    assert set(sizes[:first_one]) == {2} and 2 in sizes[first_one:]
    assert m[-1]["step"] == 48
    # the 1-worker segment restarts right after the last checkpoint (every 4 steps) before the loss
    restart = m[first_one]["step"]
    assert out["removed_after"] - 4 < restart <= out["removed_after"] + 1
    # each logged step is trained from one consistent state: a step seen twice has the same loss
    by_step = {}
    for x in m:
        by_step.setdefault(x["step"], []).append(x["loss"])
    for losses in by_step.values():
        assert max(losses) - min(losses) < 1e-3 * max(1.0, abs(losses[0]))
    # the curve is continuous and still falls across both resizes
    assert by_step[48][0] < by_step[1][0]
