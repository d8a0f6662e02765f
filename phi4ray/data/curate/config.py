"""What the curate stage reads, which document filters run in which order, and how hard each is.
Every filter's own config nests here, so any threshold is one dotted override away
(curate.corruption.max_dup_line_frac=0.2), and so does the reader's (curate.reader.text_field=content)."""
from __future__ import annotations

from dataclasses import dataclass

from phi4ray.data.curate.classifier import QualityClassifierConfig
from phi4ray.data.curate.decontam import DecontamConfig
from phi4ray.data.curate.documents import document_schema
from phi4ray.data.curate.filters import CorruptionConfig
from phi4ray.data.curate.html import ExtractConfig
from phi4ray.data.curate.minhash import MinHashConfig
from phi4ray.data.curate.readers import ReaderConfig
from phi4ray.data.packing import PHI4_MIXTURE
from phi4ray.run.errors import ConfigError

ANNOTATORS = ("heuristic", "fleet", "endpoint")
DEFAULT_FILTERS = ("html", "corruption", "language", "decontam")


@dataclass(frozen=True)
class QualityConfig:
    """Quality classifier trained on annotations of a sample (FineWeb-Edu style), applied to all.

    annotator: "endpoint" (an OpenAI-compatible judge at `url`) or "fleet" (`model`, an HF folder,
    served on our sampler fleet) rate `annotate_docs` sampled documents for educational value and
    reasoning depth; "heuristic" labels the sample by the passage heuristics of
    `phi4ray.data.curate.passages.passage_scores` instead: the weak-label fallback for a run with no
    judge yet (the tiny preset: before pretraining there is no model that can judge)."""
    annotator: str = "heuristic"
    url: str = ""
    name: str = ""                  # the judge's model name at `url`
    api_key_env: str = "OPENAI_API_KEY"
    model: str = ""                 # fleet: the judge model folder
    annotate_docs: int = 256
    judge_max_tokens: int = 256     # the judge's reply: a justification and two scores
    label_threshold: float = 3.0    # educational value >= this is "keep" (FineWeb-Edu uses 3)
    # prose whose p(keep) is below this is dropped ("quality"); 0 scores every document, drops none.
    # 0.5 is the classifier's own decision, "the annotator more likely says keep than drop": the
    # rule that disagrees least with its labels, and FineWeb-Edu's (keep what the classifier
    # rates at or above the annotators' keep threshold). No per-corpus tuning: the labels of a
    # few hundred documents carry the corpus' keep rate into p(keep). Heuristic labels split at
    # their median, so there it drops about half the prose (measured on the tiny run's corpus: 105
    # of 221 prose documents, web keeping ~400k characters, several times the ~35k tokens its
    # mixture reads from web). Not applied when the classifier does not tell the labels apart on
    # held-out documents (phi4ray.data.curate.quality.train_quality)
    min_score: float = 0.5
    classifier: QualityClassifierConfig = QualityClassifierConfig()

    def __post_init__(self) -> None:
        if self.annotator not in ANNOTATORS:
            raise ConfigError(f"curate.quality.annotator={self.annotator!r} must be one of {ANNOTATORS}")
        if self.annotator == "endpoint" and not (self.url and self.name):
            raise ConfigError("curate.quality.annotator=endpoint needs curate.quality.url and curate.quality.name")
        if self.annotator == "fleet" and not self.model:
            raise ConfigError("curate.quality.annotator=fleet needs curate.quality.model (an HF model folder)")
        if self.judge_max_tokens < 1:
            raise ConfigError(f"curate.quality.judge_max_tokens={self.judge_max_tokens} must be >= 1")
        if self.annotate_docs < 4:
            raise ConfigError(f"curate.quality.annotate_docs={self.annotate_docs} must be >= 4")
        if (isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
                or not 0.0 <= self.min_score <= 1.0):
            raise ConfigError(f"curate.quality.min_score={self.min_score!r} must be a number in [0, 1] "
                              "(a p(keep); 0 drops nothing)")


@dataclass(frozen=True)
class CurateConfig:
    # `source=path` entries (source: a mixture source, where RUN/curated/<source> goes); a path is a
    # file, folder or glob through fsspec; `code:` before a folder reads it as a code repository.
    # Empty: the built-in raw corpus from this machine's own files (phi4ray.data.curate.builtin).
    inputs: tuple[str, ...] = ()
    builtin_docs: int = 200         # documents per built-in raw file
    languages: tuple[str, ...] = ()  # lid.176 codes kept (code is exempt); empty keeps every language
    min_lang_score: float = 0.0     # below this the language is unknown and the document dropped
    eval_files: tuple[str, ...] = ()  # more evaluation sets to decontaminate against (the eval
    # stage's suites, RUN/eval/suites, always count)
    # Ray Data actors reading and filtering input files, and applying the verdicts at the end;
    # 0: one per CPU Ray Data may use on the cluster
    shard_actors: int = 0
    # a shard is filtered in batches of at most this much text in memory (and this many rows),
    # so one worker never holds a whole input file
    batch_bytes: int = 32 * 2**20
    batch_rows: int = 8192
    # the document filters, in the order they run (registered names, phi4ray.data.curate.registry, or
    # package.module:Class); a document stops at the first that drops it
    filters: tuple[str, ...] = DEFAULT_FILTERS
    reader: ReaderConfig = ReaderConfig()
    extract: ExtractConfig = ExtractConfig()
    corruption: CorruptionConfig = CorruptionConfig()
    minhash: MinHashConfig = MinHashConfig()
    decontam: DecontamConfig = DecontamConfig()
    quality: QualityConfig = QualityConfig()

    def __post_init__(self) -> None:
        for entry in self.inputs:
            source, sep, path = entry.partition("=")
            if not sep or not path:
                raise ConfigError(f"curate.inputs: {entry!r} is not source=path")
            if source not in PHI4_MIXTURE:
                raise ConfigError(f"curate.inputs: source {source!r} in {entry!r} is not one of {list(PHI4_MIXTURE)}")
        if self.builtin_docs < 1 or self.batch_bytes < 1 or self.batch_rows < 1:
            raise ConfigError("curate.builtin_docs, curate.batch_bytes and curate.batch_rows must be >= 1")
        if self.shard_actors < 0:
            raise ConfigError(f"curate.shard_actors={self.shard_actors} must be >= 0 (0: one per CPU)")
        if not 0.0 <= self.min_lang_score <= 1.0:
            raise ConfigError(f"curate.min_lang_score={self.min_lang_score} must be in [0, 1]")
        if len(set(self.filters)) != len(self.filters):
            raise ConfigError(f"curate.filters={self.filters} names a filter twice")
        document_schema(self.filters)  # every name resolves and no two filters write one column

    def parsed_inputs(self) -> list[tuple[str, str]]:
        return [tuple(e.split("=", 1)) for e in self.inputs]
