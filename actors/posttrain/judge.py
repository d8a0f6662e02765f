"""The Serve sampler fleet as a judge-guided-data policy and judge.

`FleetPolicy` samples responses from the fleet at the token level (through a deployment handle,
`actors.serve.sampler_client.FleetSampler`); `FleetJudge` answers judge prompts greedily on it. Both plug
into the Ray-free drivers: `phi4ray.posttrain.judged_pairs.build_judged_pairs` (DPO round 2 pairs) and
`phi4ray.posttrain.judged_sft.best_of_n_sft` (SFT best-of-N), next to the endpoint policy and judge of
phi4ray.posttrain.judge_endpoint. The fleet spreads their calls over its replicas.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actors.serve.names import APP_NAME
from phi4ray.model.tokenizer import tokenizer_for
from phi4ray.posttrain.judge import Candidate
from phi4ray.posttrain.judge_endpoint import EndpointJudge
from phi4ray.posttrain.judge_prompts import as_prompt, grade
from phi4ray.posttrain.judged_pairs import build_judged_pairs
from phi4ray.posttrain.judged_sft import best_of_n_sft
from phi4ray.serve.endpoint import EndpointConfig
from phi4ray.serve.sampling import SampleRequest


# --- policies: who writes the responses ----------------------------------------------------------
@dataclass
class FleetPolicy:
    """Responses sampled from the Serve fleet. `sampler` defaults to a FleetSampler on
    (deployment, app); anything with `async sample(SampleRequest)` works (tests record calls)."""
    model_id: str
    deployment: str = ""
    app: str = APP_NAME
    n: int = 1
    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    sampler: object = None
    model_dir: str | None = None  # the served model's folder, whose tokenizer renders and decodes (None: Phi-4's)

    def __post_init__(self) -> None:
        self.tok = tokenizer_for(self.model_dir)
        if self.sampler is None:
            from actors.serve.sampler_client import FleetSampler  # deferred: Ray Serve loads only when no sampler is given

            self.sampler = FleetSampler(self.deployment, self.app)

    async def respond(self, prompt_ids: list[int], question: str, n: int | None = None) -> list[Candidate]:
        samples = await self.sampler.sample(SampleRequest(
            prompt_ids=list(prompt_ids), n=n or self.n, max_tokens=self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, stop_ids=[self.tok.end_turn_id]))
        # the sampled ids are the response, exactly: DPO then trains on the tokens the policy
        # produced (ending with its end of turn when it stopped), with no decode/re-encode drift
        return [Candidate(self.model_id, list(s.token_ids), self.tok.decode_response(s.token_ids), s.finish_reason)
                for s in samples]


# --- judges: async callables prompt_text -> answer text --------------------------------------------
@dataclass
class FleetJudge:
    """The judge prompt rendered as a user turn, answered greedily by the fleet, decoded."""
    deployment: str = ""
    app: str = APP_NAME
    max_tokens: int = 128
    sampler: object = None
    model_dir: str | None = None  # the served model's folder (its tokenizer; None: Phi-4's)

    def __post_init__(self) -> None:
        self.tok = tokenizer_for(self.model_dir)
        if self.sampler is None:
            from actors.serve.sampler_client import FleetSampler  # deferred: Ray Serve loads only when no sampler is given

            self.sampler = FleetSampler(self.deployment, self.app)

    async def __call__(self, prompt_text: str, guide: dict | None = None) -> str:
        req = SampleRequest(prompt_ids=self.tok.render_prompt(prompt_text), n=1, max_tokens=self.max_tokens,
                            temperature=0.0, stop_ids=[self.tok.end_turn_id], guide=guide)
        return self.tok.decode_response((await self.sampler.sample(req))[0].token_ids)


# --- judge-guided data on a running fleet -----------------------------------------------------------
def judge_for(cfg, app, model_id: str):
    """The run's judge: `dpo.judge_url`'s endpoint when set, else `model_id` of `app` (a Fleet App)."""
    d = cfg.dpo
    if d.judge_url:
        return EndpointJudge(EndpointConfig(d.judge_url, d.judge_model, api_key_env=d.judge_api_key_env),
                             structured=d.judge_structured)
    return FleetJudge(deployment=app.models[model_id], app=app.name, model_dir=app.folders[model_id])


def judge_round(cfg, served: list[tuple[str, object, str]], queries: list[dict], out_dir: Path) -> dict:
    """DPO round 2's pairs: `dpo.judge_responses` responses per query from each served policy,
    (label, Fleet App, model id), scored by the judge (`judge_for` the first policy). Accuracy comes
    from each query's oracle. Writes out_dir/{pairs.parquet, no_pair.jsonl, report.json, results.jsonl}."""
    d = cfg.dpo
    policies = [FleetPolicy(model_id=label, deployment=app.models[mid], app=app.name, n=d.judge_responses,
                            max_tokens=d.judge_max_tokens or cfg.pts.max_tokens, seed=cfg.seed,
                            model_dir=app.folders[mid]) for label, app, mid in served]
    _, app, mid = served[0]
    return build_judged_pairs([as_prompt(q) for q in queries], policies, judge_for(cfg, app, mid), out_dir,
                              concurrency=cfg.pts.concurrency, oracle=grade)


def best_of_n_round(cfg, app, queries: list[dict], out_path: Path) -> dict:
    """SFT's best-of-N: `sft.best_of_n` responses per query from the app's model, the judge's best
    that the query's oracle does not rule out kept as a conversation in out_path (JSONL)."""
    s = cfg.sft
    policy = FleetPolicy(model_id=app.model_id, deployment=app.deployment, app=app.name, n=s.best_of_n,
                         max_tokens=s.best_of_n_max_tokens, seed=cfg.seed, model_dir=app.folders[app.model_id])
    return best_of_n_sft([as_prompt(q) for q in queries], policy, judge_for(cfg, app, app.model_id), s.best_of_n,
                         out_path, concurrency=cfg.pts.concurrency, oracle=grade)
