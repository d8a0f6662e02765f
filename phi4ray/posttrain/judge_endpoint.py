"""Policy and judge behind an external OpenAI-compatible chat endpoint (a teacher model).

`EndpointPolicy` writes responses and `EndpointJudge` answers judge prompts for the judge-guided
data drivers (phi4ray.posttrain.judged_pairs, phi4ray.posttrain.judged_sft); the Serve fleet's counterparts are in
actors/posttrain/judge.py. The HTTP client is created on first use, inside the running event loop it binds
to, and closed by `aclose()`.
"""
from __future__ import annotations

from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.posttrain.judge import Candidate
from phi4ray.serve.guide import endpoint_body


class EndpointPolicy:
    """Responses from an external OpenAI-compatible chat endpoint (a teacher model)."""

    def __init__(self, model_id: str, config, n: int = 1, max_tokens: int = 1024, temperature: float = 1.0,
                 model_dir: str | None = None):
        """`model_dir`: the model the responses will train (its tokenizer encodes them; None: Phi-4's)."""
        self.model_id, self.config, self.n = model_id, config, n
        self.tok = tokenizer_for(model_dir)
        self.max_tokens, self.temperature = max_tokens, temperature
        self._client = None

    def _endpoint(self):
        from phi4ray.serve.endpoint import OpenAIEndpoint  # deferred: httpx loads only for endpoint policies

        if self._client is None:  # created inside the running loop: the client binds to it
            self._client = OpenAIEndpoint(self.config)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def respond(self, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
        out = await self._endpoint().chat([{"role": "user", "content": question}], max_tokens=self.max_tokens,
                                          temperature=self.temperature, n=n or self.n)
        cands = []
        for choice in out.get("choices", []):
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            # the endpoint gives text, not our token ids: encode it as ordinary text (special-token
            # strings in it stay text) and close the turn with the end-of-turn id, as the fleet's own
            # samples end; a cut-off answer gets none, so it is never taught as finished
            ids = self.tok.encode_ordinary(text) + ([self.tok.end_turn_id] if finish == "stop" else [])
            cands.append(Candidate(self.model_id, ids, text, finish))
        return cands


class EndpointJudge:
    """A judge behind an external OpenAI-compatible endpoint, answering at temperature 0."""

    def __init__(self, config, max_tokens: int = 256, structured: bool = True):
        self.config, self.max_tokens, self._client = config, max_tokens, None
        self.structured = structured  # False: the endpoint takes no guide, the answer's form is asked for in words only

    async def __call__(self, prompt_text: str, guide: dict | None = None) -> str:
        from phi4ray.serve.endpoint import OpenAIEndpoint  # deferred: httpx loads only for endpoint judges

        if self._client is None:
            self._client = OpenAIEndpoint(self.config)
        out = await self._client.chat([{"role": "user", "content": prompt_text}], max_tokens=self.max_tokens,
                                      temperature=0.0, extra=endpoint_body(guide if self.structured else None) or None)
        return (out["choices"][0].get("message") or {}).get("content") or ""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
