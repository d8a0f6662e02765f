"""A sampler replica lost while PTS actors sample against the real fleet (Ray Serve + vLLM).

The replica's process is SIGKILLed (as the OOM killer or a lost node would) while it holds PTS
sampling calls. FleetSampler retries them; with the fleet's only replica gone, Serve's router holds
the retries until the replacement replica runs. PTS requests are seeded per prompt (run_search's
`seed`), so a retried call samples what the lost one would have: the disturbed search must equal
an undisturbed one with the same seed, pair for pair and count for count, with every query
recorded exactly once in queries.jsonl."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import psutil
import pytest
import ray
from ray import serve
from ray.exceptions import ActorDiedError

from actors.posttrain.pts import run_search
from actors.serve.sampler_client import FleetSampler
from phi4ray.posttrain.pts import PTSConfig
from phi4ray.serve.sampling import SampleRequest, derived_seed

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
PIVOT = 2
SEED = 11


def third_token_is_even(query, tok):
    def oracle(ids):
        return len(ids) > PIVOT and ids[PIVOT] % 2 == 0
    return oracle


def actors_table(actor_id: str | None = None) -> dict:
    """The GCS actor table (Name, Pid, State per actor): the state API needs the dashboard, which
    the session cluster does not start."""
    from ray._private.state import actors

    return actors(actor_id)


def replica_actors(app: str, deployment: str) -> dict[str, dict]:
    """The deployment's live replica actors, actor id -> GCS record (Serve names them
    SERVE_REPLICA::app#deployment#replica)."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {aid: a for aid, a in actors_table().items() if a["Name"].startswith(prefix) and a["State"] == "ALIVE"}


def ongoing(info: dict) -> int:
    """Calls the replica holds now: Serve's own count, answered off the replica's request loop."""
    try:
        handle = ray.get_actor(info["Name"], namespace="serve")
        return ray.get(handle.get_num_ongoing_requests.remote(), timeout=2)
    except Exception:  # noqa: BLE001 - a replica starting or just gone holds nothing
        return 0


def settled(app: str, deployment: str, timeout_s: float = 300) -> dict:
    """The deployment's replica states once it is back to one healthy RUNNING replica, as the
    session fleet was before (later tests assume one replica)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        st = serve.status().applications[app]
        dep = st.deployments[deployment]
        if st.status == "RUNNING" and dep.status == "HEALTHY" and dict(dep.replica_states) == {"RUNNING": 1}:
            return dict(dep.replica_states)
        time.sleep(1)
    raise AssertionError(f"the fleet is not back to one running replica: {serve.status().applications[app]}")


def without_wall_time(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "wall_s"}


class _DyingHandle:
    """A deployment handle whose first call dies with its replica; records every payload sent."""

    def __init__(self):
        self.payloads, self.sample = [], self

    async def remote(self, payload: dict) -> list[dict]:
        self.payloads.append(payload)
        if len(self.payloads) == 1:
            raise ActorDiedError()
        return [{"token_ids": [7], "logprobs": [0.0], "finish_reason": "stop"}]


def test_seeded_fleet_sampler_retries_the_same_request():
    s = FleetSampler("sampler", backoff_s=0.01, backoff_max_s=0.02, seed=SEED)
    s._handle = _DyingHandle()
    asyncio.run(s.sample(SampleRequest(prompt_ids=[5, 6], n=4)))
    first, retried = s._handle.payloads
    assert first == retried and first["seed"] == derived_seed(SEED, "5,6")
    assert derived_seed(SEED, "5,7") != first["seed"] != derived_seed(SEED + 1, "5,6")
    s._handle = _DyingHandle()
    asyncio.run(s.sample(SampleRequest(prompt_ids=[5, 6], seed=3)))  # a caller's own seed is kept
    assert [p["seed"] for p in s._handle.payloads] == [3, 3]


@pytest.mark.slow
def test_replica_killed_mid_search_changes_no_result(sampler_app, tmp_path):
    app, dep = sampler_app["app"], sampler_app["deployment"]
    # 2 actors x 1 call each: the calls in flight stay at the autoscaling target (2 per replica),
    # so the fleet stays at one replica and the kill takes all of its capacity
    cfg = PTSConfig(samples_per_estimate=8, p_gap=0.5, max_tokens=6, solutions_per_query=1, actors=2, concurrency=1)
    queries = [{"id": f"q{i}", "question": f"Tell me about {w}.", "answer": ""}
               for i, w in enumerate(["owls", "salt", "maps", "bread", "glass", "moss"])]

    def search(out):
        out.mkdir()
        return run_search(queries, out, dep, app, cfg, "tiny", oracle_for=third_token_is_even, seed=SEED)

    t0 = time.time()
    calm = search(tmp_path / "calm")
    t_calm = time.time() - t0
    assert [r["query_id"] for r in calm] == [q["id"] for q in queries]
    assert sum(len(r["pairs"]) for r in calm) >= 1  # the planted pivot gives pairs to compare

    before = replica_actors(app, dep)
    assert before
    result, errors = {}, []

    def disturbed():
        try:
            result["hit"] = search(tmp_path / "hit")
        except BaseException as e:  # noqa: BLE001 - re-raised in the test body
            errors.append(e)

    t0 = time.time()
    worker = threading.Thread(target=disturbed)
    worker.start()
    victim = None
    while victim is None and worker.is_alive():
        busy = [(aid, info) for aid, info in replica_actors(app, dep).items() if ongoing(info) > 0]
        if busy:
            victim = busy[0]
        else:
            time.sleep(0.02)
    assert victim is not None, "the search finished before a replica held a call: nothing was killed"
    victim_id, info = victim
    engine = psutil.Process(info["Pid"]).children(recursive=True)  # vLLM's EngineCore and its worker
    done_at_kill = len((tmp_path / "hit" / "queries.jsonl").read_text().splitlines())
    os.kill(info["Pid"], signal.SIGKILL)
    t_kill = time.time()
    worker.join(timeout=600)
    t_hit = time.time() - t0
    assert not worker.is_alive() and not errors, errors
    assert done_at_kill < len(queries)  # the kill landed mid-search

    # the kill was real: that replica actor is dead, its process and its engine's processes gone,
    # and a new replica took its place
    with pytest.raises(ProcessLookupError):
        os.kill(info["Pid"], 0)
    assert actors_table(victim_id)["State"] == "DEAD"
    assert engine and not psutil.wait_procs(engine, timeout=60)[1]
    assert settled(app, dep) == {"RUNNING": 1}
    t_settled = time.time() - t_kill
    after = replica_actors(app, dep)
    assert victim_id not in after and set(after) - set(before)

    # every query recorded exactly once, and the same results as the undisturbed search
    ids = [json.loads(x)["query_id"] for x in (tmp_path / "hit" / "queries.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(q["id"] for q in queries) and len(set(ids)) == len(ids)
    assert [without_wall_time(r) for r in result["hit"]] == [without_wall_time(r) for r in calm]
    # the new replica serves
    assert len(FleetSampler(dep, app).sample_sync(SampleRequest(prompt_ids=[1, 2, 3], n=2, max_tokens=4))) == 2
    print(f"calm search {t_calm:.1f}s; disturbed search {t_hit:.1f}s ({done_at_kill}/{len(queries)} "
          f"queries done at the kill); one replica again {t_settled:.1f}s after the kill")
