"""What the synthesize stage does: which steps, on how many seeds, with which teacher, in what chunks.

Every step's own config nests here, so any knob is one dotted override away
(`synth.rewrite.sampling.max_tokens=64`, `synth.reversal.limits.wall_s=5`, `synth.call.retries=1`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from phi4ray.data.synth.agents import AgentsConfig
from phi4ray.data.synth.llm import CallConfig
from phi4ray.data.synth.plurality import PluralityConfig
from phi4ray.data.synth.qa import QAConfig
from phi4ray.data.synth.reversal import ReversalConfig
from phi4ray.data.synth.revise import ReviseConfig
from phi4ray.data.synth.rewrite import KINDS as REWRITE_KINDS
from phi4ray.data.synth.rewrite import RewriteConfig
from phi4ray.data.synth.steps import QUESTION_STEPS
from phi4ray.run.errors import ConfigError

# recipe order; plurality and agents run after qa because qa's questions are among their seeds
STEPS = ("rewrite", "revise", "reversal", "qa", "plurality", "agents")


@dataclass(frozen=True)
class SynthesizeConfig:
    steps: tuple[str, ...] = STEPS
    seeds: int = 64                 # seeds per step drawn from RUN/curated (plurality: as many qa
                                    # questions, and as many from questions_file)
    teacher: str = "fleet"          # "fleet": serve teacher_model on our sampler fleet; "endpoint": teacher_url
    teacher_model: str = ""         # HF folder for the fleet; "" = the run's newest model folder
    teacher_url: str = ""           # OpenAI-compatible base URL (…/v1) when teacher="endpoint"
    teacher_name: str = ""          # the model name that endpoint expects
    teacher_api_key_env: str = "OPENAI_API_KEY"
    teacher_mode: str = "chat"      # endpoint: "chat" (the server applies its template) or "completions"
    # the unit of work and of resume: a chunk's rows are written at once, so a crash costs at most
    # the chunks in flight; smaller chunks resume finer, larger ones give the engine fuller batches
    chunk_size: int = 16
    actors: int = 2                 # Ray Data actors running chunks (each one chunk at a time)
    actor_cpus: float = 0.5         # logical CPUs per actor: they mostly wait on the teacher
    # prose seeds: passages of web/acquired documents (phi4ray.data.curate.passages.segment_passages)
    passage_max_chars: int = 2000
    passage_min_chars: int = 200
    # code seeds: top-level functions of code documents, between these sizes
    code_min_lines: int = 3
    code_max_chars: int = 3000
    arith_questions: int = 16       # plurality: toy arithmetic problems besides qa's questions
    # plurality: organic questions, JSONL or Parquet (any fsspec path) of {"question", optional
    # "answer", "id"}; its first `seeds` valid rows join qa's questions (phi4ray.data.synth.seeds)
    questions_file: str = ""
    # > 0: that many toy-domain problems with worked solutions, each verified by the domain's oracle,
    # become synthetic documents (phi4ray.toy.synth): a synthetic source that needs no teacher, for
    # runs whose teacher writes nothing usable (the tiny preset's random model); 0 = off
    toy_problems: int = 0
    # rewrite kinds that restate a web passage in another form go to the mixture's `web_rewrites`
    # source; the other kinds (new exercises, reasoning problems) are new data, `synthetic`
    web_rewrite_kinds: tuple[str, ...] = ("discussion",)
    # qa's kept pairs, each asked after its whole source document among same-source documents,
    # become midtraining's synthetic long rows (phi4ray.data.synth.long, RUN/synthetic/long): at
    # most this many characters; 0 = the midtraining context's worth (4 per token), so a row fits
    # one midtraining sequence
    long_chars: int = 0
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    revise: ReviseConfig = field(default_factory=ReviseConfig)
    reversal: ReversalConfig = field(default_factory=ReversalConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    plurality: PluralityConfig = field(default_factory=PluralityConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    call: CallConfig = field(default_factory=CallConfig)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.steps) - set(STEPS))
        if unknown:
            raise ConfigError(f"synth.steps: unknown step(s) {unknown}; steps: {list(STEPS)}")
        if not self.steps or len(set(self.steps)) != len(self.steps):
            raise ConfigError(f"synth.steps={self.steps!r} must name each step at most once, at least one")
        if self.teacher not in ("fleet", "endpoint"):
            raise ConfigError(f"synth.teacher={self.teacher!r} must be 'fleet' or 'endpoint'")
        if self.teacher == "endpoint" and not (self.teacher_url and self.teacher_name):
            raise ConfigError("synth.teacher=endpoint needs synth.teacher_url and synth.teacher_name")
        if self.teacher_mode not in ("chat", "completions"):
            raise ConfigError(f"synth.teacher_mode={self.teacher_mode!r} must be 'chat' or 'completions'")
        nested = {"rewrite": RewriteConfig, "revise": ReviseConfig, "reversal": ReversalConfig, "qa": QAConfig,
                  "plurality": PluralityConfig, "agents": AgentsConfig, "call": CallConfig}
        for name, typ in nested.items():
            if not isinstance(getattr(self, name), typ):
                raise ConfigError(f"synth.{name} must be a {typ.__name__}, got {type(getattr(self, name)).__name__}")
        for name in ("seeds", "chunk_size", "actors", "passage_max_chars", "code_min_lines", "code_max_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synth.{name}={getattr(self, name)} must be >= 1")
        if self.actor_cpus < 0:
            raise ConfigError(f"synth.actor_cpus={self.actor_cpus} must be >= 0")
        if not 0 <= self.passage_min_chars <= self.passage_max_chars:
            raise ConfigError(f"synth.passage_min_chars={self.passage_min_chars} must be in "
                              f"[0, passage_max_chars={self.passage_max_chars}]")
        if self.arith_questions < 0:
            raise ConfigError(f"synth.arith_questions={self.arith_questions} must be >= 0")
        if self.long_chars < 0:
            raise ConfigError(f"synth.long_chars={self.long_chars} must be >= 0 (0: the midtraining context's worth)")
        if self.toy_problems < 0:
            raise ConfigError(f"synth.toy_problems={self.toy_problems} must be >= 0 (0: no toy source)")
        asking = [st for st in QUESTION_STEPS if st in self.steps]
        if asking and "qa" not in self.steps and not (self.arith_questions or self.questions_file):
            raise ConfigError(f"synth.steps has {' and '.join(asking)} without qa, synth.questions_file or "
                              f"synth.arith_questions: {asking[0]} would have no question to work on")
        if self.questions_file and not asking:
            raise ConfigError(f"synth.questions_file={self.questions_file!r} feeds the "
                              f"{' and the '.join(f'{st} step' for st in QUESTION_STEPS)}, which "
                              f"synth.steps={','.join(self.steps)} leaves out")
        if "plurality" in self.steps and self.plurality.sampling.temperature == 0:
            raise ConfigError("synth.plurality.sampling.temperature=0: N greedy answers are one answer N times "
                              "(every question 'too_easy'), and vLLM refuses n > 1 at temperature 0")
        if set(self.web_rewrite_kinds) - set(REWRITE_KINDS):
            raise ConfigError(f"synth.web_rewrite_kinds={self.web_rewrite_kinds!r}: kinds are {sorted(REWRITE_KINDS)}")
