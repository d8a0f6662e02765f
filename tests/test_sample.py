"""KV-cached sampling (phi4ray.model.sample) against the decoder's full forward, token for token."""
from __future__ import annotations

import torch

from phi4ray.model.decoder import greedy_decode
from phi4ray.model.sample import sample
from tests.conftest import peaky_tiny

PROMPTS = [[5, 17, 300, 42], [900, 8, 8, 8, 8, 8, 8, 71, 2], [1234]]  # different lengths: left padding


def _uncached(model, prompts, max_new, temperature, gen):
    """The reference: every step recomputes each left-padded row with the full forward."""
    width = max(len(p) for p in prompts)
    x = torch.zeros(len(prompts), width, dtype=torch.long)
    docs = torch.zeros_like(x)
    for r, p in enumerate(prompts):
        x[r, width - len(p):], docs[r, width - len(p):] = torch.tensor(p), 1
    out = [[] for _ in prompts]
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(x, doc_ids=docs)[:, -1].float()
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
            x, docs = torch.cat([x, nxt], 1), torch.cat([docs, docs[:, -1:]], 1)
            for r, t in enumerate(nxt[:, 0].tolist()):
                out[r].append(t)
    return out


def test_greedy_equals_the_reference_decode_for_prompts_of_any_length():
    model = peaky_tiny().eval()
    got = sample(model, PROMPTS, 10, 1e-6, torch.Generator().manual_seed(0), stop_id=-1)
    assert got == [greedy_decode(model, p, 10) for p in PROMPTS]


def test_sampled_tokens_equal_the_uncached_forward_with_the_same_seed():
    model = peaky_tiny().eval()
    got = sample(model, PROMPTS, 12, 1.0, torch.Generator().manual_seed(7), stop_id=-1)
    want = _uncached(model, PROMPTS, 12, 1.0, torch.Generator().manual_seed(7))
    assert got == want and len({tuple(o) for o in got}) == len(PROMPTS)


def test_stops_once_every_row_has_stopped():
    model = peaky_tiny().eval()
    first = sample(model, [PROMPTS[0]], 1, 1e-6, torch.Generator(), stop_id=-1)[0][0]
    # the first greedy token as the stop id: one step, whatever max_new_tokens says
    assert sample(model, [PROMPTS[0]], 50, 1e-6, torch.Generator(), stop_id=first) == [[first]]
