"""Converters from public benchmark files (GSM8K, MATH, MMLU, MMLU-Pro, GPQA, MGSM, HumanEval+)
to suite JSONL files that `eval.files` takes: `convert(fmt, source, out)` or
`python -m phi4ray.evals.converters FORMAT IN OUT [--quarantine Q]`.

readers (streaming record readers), formats (one converter per benchmark), writer (the suite and
quarantine files, and the counts).
"""
from phi4ray.evals.converters.formats import FORMATS
from phi4ray.evals.converters.readers import ConvertError
from phi4ray.evals.converters.writer import Counts, convert, quarantine_path

__all__ = ["FORMATS", "ConvertError", "Counts", "convert", "quarantine_path"]
