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
    """One line per stage: each suite's accuracy with its 95% interval (none for a stage with no
    suites: lm-eval tasks alone)."""
    lines = []
    for stage, per in ((s, per) for s, per in summary.items() if per):
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


# --- lm-eval's registry tasks (eval.lm_eval_tasks) -----------------------------------------------
def lm_eval_summary(records: dict[str, dict], path: Path) -> dict:
    """RUN/eval/lm_eval.json across the models ({stage: the record phi4ray.evals.lm_eval_task.
    lm_eval_model wrote}): the records, one row per model, task and metric (lm-eval's own
    "metric,filter" split in two, its stderr beside it; a tag's tasks each get their rows, a
    group's own aggregate is shown) and the failed tasks."""
    rows, errors = [], []
    for stage, record in records.items():
        for task, r in record["tasks"].items():
            if "error" in r:
                errors.append({"model": stage, "task": task, "error": r["error"]})
                continue
            shown = [task] if task in r["results"] else sorted(r["results"])
            for name in shown:
                res = r["results"][name]
                for key, value in res["metrics"].items():
                    metric, _, filt = key.partition(",")
                    if metric.endswith("_stderr"):
                        continue
                    rows.append({"model": stage, "task": name, "metric": metric, "filter": filt, "value": value,
                                 "stderr": res["metrics"].get(f"{metric}_stderr,{filt}"),
                                 "n": res.get("n", r["n"])})
    summary = {"models": records, "rows": rows, "errors": errors}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))
    return summary


def lm_eval_lines(summary: dict) -> list[str]:
    """One console line per model, task and metric; one per failed task."""
    def num(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"lm-eval {r['model']}: {r['task']} {r['metric']},{r['filter']} {num(r['value'])}"
             + (f" ± {num(r['stderr'])}" if r["stderr"] is not None else "") + f" (n {r['n']})" for r in summary["rows"]]
    return lines + [f"lm-eval {e['model']}: {e['error']}" for e in summary["errors"]]


def lm_eval_counts(summary: dict, tasks: tuple[str, ...]) -> dict:
    scores: dict = {}
    for r in summary["rows"]:
        scores.setdefault(r["model"], {}).setdefault(r["task"], {})[f"{r['metric']},{r['filter']}"] = r["value"]
    return {"lm_eval_tasks": len(tasks), "lm_eval_errors": len(summary["errors"]), "lm_eval": scores}
