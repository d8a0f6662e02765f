"""The eval stage's scores across the run's models: RUN/eval/summary.json, the plot of accuracy
per suite after each stage (RUN/report/eval_scores.png), the console lines and the counts."""
from __future__ import annotations

import json
from pathlib import Path

from phi4ray.evals.runner import SuiteResult
from phi4ray.evals.schema import Suite


def summarize(results: dict[str, list[SuiteResult]]) -> dict[str, dict[str, dict]]:
    """{stage: {suite: SuiteResult.summary()}}, in the order given."""
    return {stage: {r.suite: r.summary() for r in rs} for stage, rs in results.items()}


def write_summary(summary: dict[str, dict[str, dict]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return path


def score_lines(summary: dict[str, dict[str, dict]]) -> list[str]:
    """One line per stage: each suite's accuracy with its 95% interval."""
    lines = []
    for stage, per in summary.items():
        cells = ", ".join(f"{name} {r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                          if r["accuracy"] is not None else f"{name} n/a" for name, r in per.items())
        lines.append(f"eval {stage}: {cells}")
    return lines


def stage_counts(summary: dict[str, dict[str, dict]], suites: list[Suite]) -> dict:
    return {"models": len(summary), "suites": len(suites), "items": sum(len(s.items) for s in suites),
            "endpoint_errors": sum(r["errors"] for per in summary.values() for r in per.values()),
            "accuracy": {st: {n: r["accuracy"] for n, r in per.items()} for st, per in summary.items()}}


def plot_scores(summary: dict[str, dict[str, dict]], path: Path) -> Path:
    """Bars of accuracy with 95% Wilson intervals: one group per suite, one bar per stage."""
    import matplotlib  # deferred: matplotlib costs a second to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    stages = list(summary)
    suites = sorted({s for per in summary.values() for s in per})
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(suites) * max(1, len(stages)) / 3, 3.6))
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        xs, ys, lo, hi = [], [], [], []
        for j, suite in enumerate(suites):
            r = summary[stage].get(suite)
            if not r or r["accuracy"] is None:
                continue
            xs.append(j + (i - (len(stages) - 1) / 2) * width)
            ys.append(r["accuracy"])
            lo.append(r["accuracy"] - r["ci_low"])
            hi.append(r["ci_high"] - r["accuracy"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=stage)
    ax.set_xticks(range(len(suites)), suites)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title("evaluation after each stage")
    ax.legend(fontsize=7, ncol=len(stages))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
