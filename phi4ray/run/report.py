"""RUN/report/index.md: one page a person reads after (or during) a run.

Built only from what the stages left behind (manifests, stats files, the PNGs each stage plots),
so it can be regenerated at any time and never disagrees with the run: stage table with wall
times and counts, the curation funnel, loss curves, PTS statistics, evaluation scores.
"""
from __future__ import annotations

import json
from pathlib import Path

from phi4ray.run.manifest import read_manifest


def pivot_table(queries_file: Path, limit: int = 20) -> list[str]:
    """The first `limit` pivots PTS found, with their token texts: what the pairs teach. Read as a
    stream, so the report costs the same at 64 queries as at 64,000."""
    if not queries_file.is_file():
        return []
    rows = []
    with open(queries_file) as f:
        for line in f:
            for p in json.loads(line).get("pairs", []):
                rows.append(p)
                if len(rows) == limit:
                    break
            if len(rows) == limit:
                break
    if not rows:
        return []
    out = ["| query | prefix (end) | chosen | rejected | p before | p after |", "|---|---|---|---|---|---|"]
    for p in rows:
        out.append(f"| {p['query_id']} | {_cell(p['prompt_text'])} | `{_cell(p['chosen_text'])}` | "
                   f"`{_cell(p['rejected_text'])}` | {p['p_before']:.2f} | {p['p_after']:.2f} |")
    return out + [""]


def _cell(text: str) -> str:
    """Token text for a Markdown table cell: escapes visible (a newline is the token), the end kept."""
    return json.dumps(text)[1:-1].replace("|", "\\|")[-60:]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _wall(m: dict) -> float:
    t = m.get("timings", {})
    return float(t.get("total_s") or sum(v for v in t.values() if isinstance(v, (int, float))))


def lm_eval_table(summary_file: Path) -> list[str]:
    """lm-evaluation-harness's registry tasks (RUN/eval/lm_eval.json): a row per model, task and
    metric ("metric,filter" as lm-eval names it, ± its stderr), then the tasks that failed."""
    if not summary_file.is_file():
        return []
    lm = json.loads(summary_file.read_text())
    out = ["### lm-evaluation-harness tasks", "", "| model | task | metric | value | n |", "|---|---|---|---|---|"]
    for r in lm["rows"]:
        value = _fmt(r["value"]) + (f" ± {_fmt(r['stderr'])}" if r["stderr"] is not None else "")
        out.append(f"| {r['model']} | {r['task']} | {r['metric']},{r['filter']} | {value} | {r['n']} |")
    out += [""] + [f"- failed on {e['model']}: {e['error']}" for e in lm["errors"]]
    return out + ([""] if lm["errors"] else [])


def plot_funnel(stats: dict, path: Path) -> Path:
    import matplotlib  # deferred: matplotlib loads in ~1 s, and only a run with a curation funnel plots

    matplotlib.use("Agg")  # no display on a cluster node; must precede pyplot's import
    import matplotlib.pyplot as plt  # deferred: after the backend is chosen

    labels = ["read"] + [f"- {k}" for k in stats["dropped_by_filter"]] + ["- quarantined", "kept"]
    values = [stats["read"]] + list(stats["dropped_by_filter"].values()) + [stats["quarantined"], stats["kept"]]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(labels) + 1))
    ax.barh(range(len(labels)), values, color=["C0"] + ["C3"] * (len(labels) - 2) + ["C2"])
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_title("curation funnel")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _quote(text) -> str:
    """A report excerpt on one line of a markdown table or list."""
    return " ".join(str(text or "").split()).replace("|", "\\|")


def synthesis_funnel(rep: dict) -> list[str]:
    """The synthesize stage's report as markdown: per step seeds -> rows -> kept, the drops by
    reason and the parse rate, then two kept examples of each step (seed -> output)."""
    lines = ["## Synthetic data", "", f"Teacher: `{rep.get('teacher')}`; seeds from {rep.get('seeds_from')}.", "",
             "| step | seeds | rows | kept | parse rate | dropped, by reason |", "|---|---|---|---|---|---|"]
    steps = rep.get("steps", {})
    for name, r in steps.items():
        dropped = ", ".join(f"{k} {v}" for k, v in r.get("dropped", {}).items()) or "-"
        rate = "-" if r.get("parse_rate") is None else _fmt(r["parse_rate"])
        lines.append(f"| {name} | {r['seeds_in']} | {r['rows_out']} | {r['ok']} | {rate} | {dropped} |")
    toy = rep.get("toy")
    if toy:
        lines.append(f"| toy (no teacher) | {toy['generated']} | {toy['generated']} | {toy['kept']} | | "
                     f"rejected by the oracle {toy['rejected']} |")
    lines += ["", f"Outputs: {json.dumps(rep.get('outputs', {}))}", ""]
    for name, r in steps.items():
        kept = [e for e in r.get("examples", []) if e["status"] == "ok"][:2]
        lines.append(f"**{name}**: " + ("no row kept" if not kept else f"{len(kept)} kept example(s)"))
        lines += [f"- `{e['seed_id']}`: {_quote(e['seed'])[:300]} -> {_quote(e['output'])[:600]}" for e in kept]
        lines.append("")
    return lines


def write_report(run_dir: str | Path, stages: list) -> Path:
    """`stages`: the pipeline's stages in order (phi4ray.run.stage.Stage: name and headline counts)."""
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# phi4ray run report: {run_dir.name}", "", "| stage | finished | wall (s) | counts |", "|---|---|---|---|"]
    total = 0.0
    for stage in stages:
        m = read_manifest(run_dir, stage.name)
        if not m:
            lines.append(f"| {stage.name} | not run | | |")
            continue
        wall = _wall(m)
        total += wall
        counts = m.get("counts", {})
        shown = ", ".join(f"{k} {_fmt(counts[k])}" for k in stage.headline if k in counts)
        lines.append(f"| {stage.name} | {m.get('finished_at', '')} | {wall:.1f} | {shown} |")
    lines += [f"| total | | {total:.1f} | |", ""]
    stats_file = run_dir / "curate" / "stats.json"
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        plot_funnel(stats, out / "curate_funnel.png")
        lines += ["## Data funnel", "", "![curation funnel](curate_funnel.png)", "",
                  f"read {stats['read']} = kept {stats['kept']} + dropped {stats['dropped']} + "
                  f"quarantined {stats['quarantined']}; kept by source {stats['kept_by_source']}", ""]
    synth = run_dir / "synthesize" / "report.json"
    if synth.is_file():
        lines += synthesis_funnel(json.loads(synth.read_text()))
    losses = [p for p in (f"loss_{s}.png" for s in ("pretrain", "midtrain", "sft", "dpo", "dpo2")) if (out / p).is_file()]
    if losses:
        lines += ["## Loss curves", ""] + [f"![{p}]({p})" for p in losses] + [""]
    pts = read_manifest(run_dir, "pts")
    if pts:
        lines += ["## Pivotal Token Search", ""]
        if (out / "pts_p_query.png").is_file():
            lines += ["![p(success) per query](pts_p_query.png)", ""]
        lines += ["```json", json.dumps(pts.get("counts", {}), indent=1)[:3000], "```", ""]
        lines += pivot_table(run_dir / "pts" / "queries.jsonl")
    rounds = {name: m["counts"] for name in ("dpo", "dpo2")
              if (m := read_manifest(run_dir, name)) and "heldout_success_before" in m.get("counts", {})}
    if rounds:
        lines += ["## What DPO did", "", "| round | pairs (train / held out) | p(success) before | after | "
                  "paired change | held-out pair accuracy |", "|---|---|---|---|---|---|"]
        for name, c in rounds.items():
            lines.append(
                f"| {name} | {c['train_pairs']} / {c['heldout_pairs']} | {c['heldout_success_before']:.3f} +- "
                f"{c.get('heldout_success_ci95_before', float('nan')):.3f} | {c['heldout_success_after']:.3f} +- "
                f"{c.get('heldout_success_ci95_after', float('nan')):.3f} | "
                f"{c.get('heldout_success_change', float('nan')):+.3f} +- "
                f"{c.get('heldout_success_change_ci95', float('nan')):.3f} | "
                f"{c.get('heldout_pair_accuracy_before')} -> {c.get('heldout_pair_accuracy_after')} |")
        lines += ["", f"p(success) on {next(iter(rounds.values())).get('heldout_queries', '?')} held-out queries, "
                  "95% intervals over queries; round 2 starts from round 1's model.", ""]
    judged = ((read_manifest(run_dir, "dpo2") or {}).get("counts") or {}).get("judge_round")
    if judged:
        lines += ["DPO round 2's judge: " + json.dumps(judged), ""]
    summary = run_dir / "eval" / "summary.json"
    if summary.is_file():
        per_stage = json.loads(summary.read_text())
        suites = sorted({s for per in per_stage.values() for s in per})
        lines += ["## Evaluation after each stage", "", "![eval scores](eval_scores.png)", "",
                  "| model | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]
        for stage, per in per_stage.items():
            cells = [f"{per[s]['accuracy']:.2f} [{per[s]['ci_low']:.2f}, {per[s]['ci_high']:.2f}]"
                     if s in per and per[s]["accuracy"] is not None else "n/a" for s in suites]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += lm_eval_table(run_dir / "eval" / "lm_eval.json")
    path = out / "index.md"
    path.write_text("\n".join(lines))
    return path
