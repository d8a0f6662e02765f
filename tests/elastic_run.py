"""Elastic training on a local multi-node Ray cluster (ray.cluster_utils.Cluster), run as its own
process by tests/test_elastic.py: 2 workers -> a node is removed -> 1 worker resumes from the last
checkpoint -> a node is added -> back to 2. Prints the metrics as JSON."""
import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors.train.trainer import run_training
from phi4ray.model.config import model_preset
from phi4ray.train.jobs import TrainJob
from phi4ray.train.metrics import read_metrics
from phi4ray.train.step import TrainConfig
from tests.test_trainer import SEQ, _write_rows


def wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def main(run_dir: str) -> None:
    run = Path(run_dir)
    tokens = _write_rows(run / "tokens", n=96)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    slot = {"num_cpus": 1, "resources": {"train_slot": 1}}
    cluster.add_node(**slot)
    doomed = cluster.add_node(**slot)
    ray.init(address=cluster.address, log_to_driver=False)
    tc = TrainConfig(seq_len=SEQ, batch_size=8, micro_batch_size=2, steps=48, checkpoint_every=4, log_every=1,
                     warmup_steps=2, lr=1e-2)
    job = TrainJob("pretrain", model_preset("tiny").replace(n_layers=2, max_seq_len=SEQ), tc, str(tokens), str(run))
    out = {}
    fit = threading.Thread(target=lambda: out.setdefault("result", run_training(
        job, num_workers=(1, 2), resources_per_worker={"CPU": 1, "train_slot": 1}, resize_check_s=2.0)))
    fit.start()
    metrics = lambda: read_metrics(run, "pretrain")  # noqa: E731
    wait_for(lambda: any(m["step"] >= 9 and m["world_size"] == 2 for m in metrics()), 300, "2-worker steps")
    removed_after = max(m["step"] for m in metrics())
    cluster.remove_node(doomed)
    wait_for(lambda: any(m["world_size"] == 1 and m["step"] >= removed_after + 2 for m in metrics()), 300,
             "1-worker steps after the node went")
    added_after = max(m["step"] for m in metrics())
    cluster.add_node(**slot)
    fit.join(600)
    result = out["result"]
    print(json.dumps({"error": repr(result.error) if result.error else None, "removed_after": removed_after,
                      "added_after": added_after, "metrics": metrics()}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
