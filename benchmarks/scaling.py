"""Does anything grow with the corpus? curate -> tokenize -> the first pretraining steps on a
generated corpus at 1x and Nx size, in one run, each stage a `phi4ray` process of its own.

The corpus (benchmarks/scaling_corpus.py): man pages as JSONL, HTML pages in WARC files and the
Python stdlib as a code folder, from this machine's files, N times the documents at Nx. Each size
runs `phi4ray init, curate, tokenize, pretrain` on the tiny preset in a fresh run dir with
`data.total_tokens=0` (the tiny preset's fixed token budget would pack the same tokens at both
sizes) and `pretrain.steps=--steps`. Per stage: wall time, the driver's peak RSS (the `phi4ray`
process) and the largest Ray worker's peak RSS (processes under the driver whose title starts
with `ray::`). Peaks are the kernel's high-water mark (VmHWM), read by polling every --interval s:
a worker that peaks in its last interval before exiting is under-counted.

Targets (issue 17): driver and worker peak RSS Nx/1x <= 1.25 in every stage, curate docs/s
Nx/1x >= 0.8 (docs read over the curate process's wall time, Ray start included, so the marginal
rate is printed too), and a second 1x run (curate + tokenize in another run dir) with the same
kept documents and the same packed token shards. --datatrove adds datatrove's
LocalPipelineExecutor on the Nx corpus's JSONL files (benchmarks/scaling_datatrove.py) against
our curate on the same files, 2 workers each. --repo runs the stages of another checkout (e.g.
`git archive <commit> | tar -x -C DIR` of the code before a change): a before/after in two runs.

Run: .venv/bin/python benchmarks/scaling.py [--base-mb 4] [--factor 8] [--set curate.shard_actors=2]
     [--datatrove | --datatrove-only] [--repo DIR] [--json out.json]
--base-mb 0.5 --factor 2 checks the script end to end in about ten minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script, benchmarks/ is sys.path[0]: the repo root for `benchmarks.`

import psutil  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.scaling_corpus import write_corpus  # noqa: E402

# the stages' environment: no RAY_ADDRESS, so each stage starts (and stops) its own local Ray
# and every Ray process it has is a descendant of its driver
ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
STAGES = ("init", "curate", "tokenize", "pretrain")
MEASURED = ("curate", "tokenize", "pretrain")  # init reads no corpus: it runs because pretrain needs its model
RSS_MAX = 1.25
DOCS_PER_S_MIN = 0.8
DT_WORKERS = 2  # datatrove's processes and our curate.shard_actors in the comparison


def _hwm_mb(proc: psutil.Process) -> float:
    """Peak RSS so far (VmHWM, Linux); the current RSS where /proc has no high-water mark."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return proc.memory_info().rss / 2**20


def run_monitored(cmd: list[str], log: Path, *, interval: float, timeout: float, worker=None, cwd: Path = ROOT) -> dict:
    """Run `cmd` in `cwd` with output to `log`; poll its peak RSS and that of its descendants
    `worker(title)` accepts. Fails with the log's tail when it exits non-zero."""
    worker = worker or (lambda title: title.startswith("ray::"))
    peak = {"wall_s": 0.0, "driver_mb": 0.0, "worker_mb": 0.0, "worker": "", "samples": 0}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        driver, busy = psutil.Process(proc.pid), {}
        try:
            while True:
                _sample(driver, peak, worker, busy)
                try:
                    proc.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    if time.perf_counter() - t0 > timeout:
                        raise TimeoutError(f"{' '.join(cmd[:4])} ran over {timeout:.0f} s (log: {log})") from None
        finally:
            if proc.poll() is None:  # its own session: the group is this command and what it started
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    peak["wall_s"] = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:])
        raise SystemExit(f"{' '.join(cmd)}\nexited {proc.returncode}; the end of {log}:\n{tail}")
    return peak


def _sample(driver: psutil.Process, peak: dict, worker, busy: dict) -> None:
    """One poll. `busy` keeps each worker's last title other than ray::IDLE: a worker that went
    idle since its peak is named by the task it ran."""
    try:
        peak["driver_mb"] = max(peak["driver_mb"], _hwm_mb(driver))
        children = driver.children(recursive=True)
    except (psutil.Error, OSError):
        return
    peak["samples"] += 1
    for p in children:
        try:
            title = " ".join(p.cmdline())
            if not worker(title):
                continue
            if not title.startswith("ray::IDLE"):
                busy[p.pid] = title.split(" ")[0][:60]
            if (mb := _hwm_mb(p)) > peak["worker_mb"]:
                peak["worker_mb"], peak["worker"] = mb, busy.get(p.pid, title.split(" ")[0][:60])
        except (psutil.Error, OSError):
            continue


def phi4ray(stage: str, run_dir: Path, overrides: list[str], args) -> dict:
    cmd = [sys.executable, "-m", "jobs.cli", stage, "--preset", "tiny", "--run-dir", str(run_dir), *overrides]
    print(f"  {run_dir.name}: phi4ray {stage} ...", end="", flush=True)
    # `-m` from the checkout's root: its own jobs/, actors/ and phi4ray/ come first on sys.path
    peak = run_monitored(cmd, run_dir.parent / f"{run_dir.name}.{stage}.log", interval=args.interval,
                         timeout=args.stage_timeout, cwd=args.repo)
    print(f" {peak['wall_s']:.0f} s, driver {peak['driver_mb']:.0f} MB, worker {peak['worker_mb']:.0f} MB")
    return peak


def run_size(label: str, inputs: list[str], input_mb: float, stages: tuple[str, ...], args, extra=()) -> dict:
    """The stages on `inputs` (curate.inputs entries) in a fresh run dir, with --set's and `extra`
    overrides; per stage its peaks, and the curate/tokenize counts."""
    run_dir = args.work / f"run-{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    overrides = [f"curate.inputs={','.join(inputs)}", "data.total_tokens=0", f"pretrain.steps={args.steps}",
                 *args.set, *extra]
    res = {"run_dir": str(run_dir), "input_mb": input_mb,
           "stages": {s: phi4ray(s, run_dir, overrides, args) for s in stages}}
    stats = json.loads((run_dir / "curate" / "stats.json").read_text())
    res.update(read=stats["read"], kept=stats["kept"], kept_by_source=stats.get("kept_by_source"),
               docs_per_s=stats["read"] / res["stages"]["curate"]["wall_s"])
    if "tokenize" in stages:
        res["tokens_packed"] = json.loads((run_dir / "manifests" / "tokenize.json").read_text())["counts"]["tokens_packed"]
    return res


# --- two runs, the same output ---------------------------------------------------------------------
def kept_ids_digest(run_dir: Path) -> str:
    """sha256 of the sorted doc ids of every kept document (RUN/curated), whatever the file layout."""
    ids = sorted(i for f in sorted((run_dir / "curated").rglob("*.parquet"))
                 for i in pq.read_table(f, columns=["doc_id"]).column("doc_id").to_pylist())
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def shard_digest(folder: Path) -> tuple[str, dict[str, str]]:
    """(sha256 over every column's values, shards in name order; {file name: sha256 of its bytes})."""
    content, files = hashlib.sha256(), {}
    for f in sorted(folder.rglob("*.parquet")):
        files[str(f.relative_to(folder))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
        table = pq.read_table(f)
        for name in sorted(table.column_names):
            col = table.column(name).combine_chunks()
            content.update(name.encode())
            if hasattr(col.type, "value_type"):  # list<int>: the lengths, then every value
                content.update(pc.list_value_length(col).to_numpy(zero_copy_only=False).tobytes())
                content.update(pc.list_flatten(col).to_numpy(zero_copy_only=False).tobytes())
            else:
                content.update(json.dumps(col.to_pylist()).encode())
    return content.hexdigest()[:16], files


def compare_runs(a: dict, b: dict) -> dict:
    da, db = Path(a["run_dir"]), Path(b["run_dir"])
    (ca, fa), (cb, fb) = shard_digest(da / "tokens"), shard_digest(db / "tokens")
    return {"kept_counts": (a["kept"], a["kept_by_source"]) == (b["kept"], b["kept_by_source"]),
            "kept_ids": kept_ids_digest(da) == kept_ids_digest(db),
            "shards": bool(fa) and ca == cb, "shard_files": len(fa), "shard_bytes": bool(fa) and fa == fb,
            "kept": [a["kept"], b["kept"]], "shard_digests": [ca, cb]}


# --- the report --------------------------------------------------------------------------------------
def ratios(small: dict, big: dict) -> dict:
    def worst(key):
        per = {s: big["stages"][s][key] / small["stages"][s][key] for s in MEASURED
               if small["stages"][s][key] > 0}
        stage = max(per, key=per.get)
        return {"ratio": per[stage], "stage": stage, "per_stage": per}

    # docs/s counts each curate process's fixed start-up (imports, Ray) once, which flatters the
    # larger corpus; the marginal rate (extra docs over extra seconds) has no fixed part
    extra_s = big["stages"]["curate"]["wall_s"] - small["stages"]["curate"]["wall_s"]
    return {"driver_rss": worst("driver_mb"), "worker_rss": worst("worker_mb"),
            "docs_per_s": {"ratio": big["docs_per_s"] / small["docs_per_s"],
                           "marginal": (big["read"] - small["read"]) / extra_s if extra_s > 0 else None}}


def print_report(sizes: dict, r: dict, same: dict, factor: int) -> None:
    def peak(res, key):
        s = max(MEASURED, key=lambda s: res["stages"][s][key])
        return f"{res['stages'][s][key]:.0f} ({s})"

    print(f"\n{'size':5s} {'input MB':>9s} {'docs read':>10s} {'kept':>7s} {'driver peak RSS MB':>22s} "
          f"{'max worker peak RSS MB':>24s} {'curate s':>9s} {'curate docs/s':>14s} {'tokens packed':>14s}")
    for label, res in sizes.items():
        print(f"{label:5s} {res['input_mb']:9.1f} {res['read']:10d} {res['kept']:7d} {peak(res, 'driver_mb'):>22s} "
              f"{peak(res, 'worker_mb'):>24s} {res['stages']['curate']['wall_s']:9.1f} {res['docs_per_s']:14.1f} "
              f"{res.get('tokens_packed', 0):14d}")
    small, big = sizes.values()
    print(f"\nper stage, 1x -> {factor}x: wall s | driver peak MB | largest worker peak MB (its title)")
    for s in small["stages"]:
        a, b = small["stages"][s], big["stages"][s]
        print(f"  {s:9s} {a['wall_s']:6.0f} -> {b['wall_s']:<6.0f} | {a['driver_mb']:5.0f} -> {b['driver_mb']:<5.0f} "
              f"x{b['driver_mb'] / max(a['driver_mb'], 1):.2f} | {a['worker_mb']:5.0f} -> {b['worker_mb']:<5.0f} "
              f"x{b['worker_mb'] / max(a['worker_mb'], 1):.2f} ({b['worker'] or '-'})"
              + ("  [no corpus input: not in the ratios]" if s not in MEASURED else ""))
    verdict = [(f"driver peak RSS {factor}x/1x (worst stage: {r['driver_rss']['stage']})", r["driver_rss"]["ratio"],
                f"<= {RSS_MAX}", r["driver_rss"]["ratio"] <= RSS_MAX),
               (f"max worker peak RSS {factor}x/1x (worst stage: {r['worker_rss']['stage']})", r["worker_rss"]["ratio"],
                f"<= {RSS_MAX}", r["worker_rss"]["ratio"] <= RSS_MAX),
               (f"curate docs/s {factor}x/1x", r["docs_per_s"]["ratio"], f">= {DOCS_PER_S_MIN}",
                r["docs_per_s"]["ratio"] >= DOCS_PER_S_MIN)]
    print()
    for name, value, target, ok in verdict:
        print(f"{name:58s} {value:6.2f}  target {target:7s} {'PASS' if ok else 'FAIL'}")
    for name, key in (("two 1x runs: kept-document counts", "kept_counts"), ("two 1x runs: kept doc ids (as a set)", "kept_ids"),
                      (f"two 1x runs: packed token shards ({same['shard_files']} files, values)", "shards")):
        print(f"{name:58s} {'same' if same[key] else 'DIFFERENT':>6s}  {'':15s} {'PASS' if same[key] else 'FAIL'}")
    print(f"  (shard files byte-identical: {'yes' if same['shard_bytes'] else 'no'}; kept {same['kept']})")
    marginal = r["docs_per_s"]["marginal"]
    print(f"marginal curate docs/s, 1x -> {factor}x (extra docs / extra seconds, no start-up): "
          + (f"{marginal:.1f}" if marginal else "n/a (the larger run was not slower: noise or start-up dominate)"))
    print("RSS peaks are VmHWM read by polling: a process that peaks in its last poll interval is under-counted; "
          "a worker's RSS includes the object-store pages it touched.")


# --- datatrove on the same JSONL files -------------------------------------------------------------
def compare_datatrove(corpus: dict, label: str, ours_mixed: dict, args) -> dict:
    """Our curate on the corpus's JSONL files alone, then datatrove's pipeline on the same files
    (benchmarks/scaling_datatrove.py, a process of its own), 2 workers each; docs/s of both."""
    missing = [m for m in ("datatrove", "orjson") if importlib.util.find_spec(m) is None]
    if missing:
        why = f"not installed: {', '.join(missing)} (`.venv/bin/pip install -e '.[bench]'`)"
        print(f"\ndatatrove comparison skipped: {why}")
        return {"skipped": why}
    jsonl = corpus["inputs"][0]  # web=<corpus>/jsonl
    ours = run_size(f"{label}-jsonl", [jsonl], corpus["prose"]["bytes"] / 2**20, ("curate",), args,
                    extra=[f"curate.shard_actors={DT_WORKERS}"])
    out = args.work / f"datatrove-{label}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"  datatrove-{label}: LocalPipelineExecutor, {DT_WORKERS} workers ...", end="", flush=True)
    peak = run_monitored([sys.executable, str(ROOT / "benchmarks" / "scaling_datatrove.py"), jsonl.split("=", 1)[1],
                          str(out), "--workers", str(DT_WORKERS)], out / "datatrove.log", interval=args.interval,
                         timeout=args.stage_timeout, worker=lambda title: True)
    theirs = {**json.loads((out / "result.json").read_text()), **peak}
    theirs["docs_per_s"] = theirs["read"] / peak["wall_s"]
    print(f" {peak['wall_s']:.0f} s")
    ratio = ours["docs_per_s"] / theirs["docs_per_s"]
    print(f"\ncurate on the {label} JSONL files ({corpus['prose']['files']} files, {theirs['read']} docs), "
          f"{DT_WORKERS} workers each:")
    print(f"  ours      {ours['docs_per_s']:8.1f} docs/s  ({ours['stages']['curate']['wall_s']:.0f} s, kept {ours['kept']}; "
          f"driver peak {ours['stages']['curate']['driver_mb']:.0f} MB)")
    print(f"  datatrove {theirs['docs_per_s']:8.1f} docs/s  ({peak['wall_s']:.0f} s, kept {theirs['kept']}; "
          f"steps: {', '.join(f'{k} {v:.0f} s' for k, v in theirs['steps_s'].items())})")
    print(f"  ours / datatrove {ratio:.2f}x  goal >= 2  {'PASS' if ratio >= 2 else 'FAIL'}   "
          + (f"(ours on the mixed {label} corpus: {ours_mixed['docs_per_s']:.1f} docs/s)" if ours_mixed else ""))
    for note in theirs["notes"]:
        print(f"  note: {note}")
    return {"ours_jsonl": ours, "datatrove": theirs, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-mb", type=float, default=4.0, help="the 1x corpus, MB of document text")
    ap.add_argument("--factor", type=int, default=8, help="the large corpus is this many times the 1x")
    ap.add_argument("--file-mb", type=float, default=1.0, help="JSONL/WARC files are cut at this size")
    ap.add_argument("--steps", type=int, default=2, help="pretrain.steps")
    ap.add_argument("--repo", type=Path, default=ROOT,
                    help="the phi4ray checkout whose stages run (default this one; e.g. a `git archive` of an "
                         "older commit for a before/after)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "scaling", help="corpora, run dirs and logs")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between RSS polls")
    ap.add_argument("--stage-timeout", type=float, default=3600, help="seconds; a stage over it is stopped")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another phi4ray override for every stage (repeatable), e.g. curate.shard_actors=2")
    ap.add_argument("--datatrove", action="store_true", help="also datatrove's pipeline on the Nx JSONL files")
    ap.add_argument("--datatrove-only", action="store_true",
                    help="only the datatrove comparison on the Nx corpus (no 1x/Nx stage runs)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    if args.factor < 2 or args.base_mb <= 0:
        ap.error("--factor must be >= 2 and --base-mb > 0")
    args.work, args.repo = args.work.resolve(), args.repo.resolve()
    if not (args.repo / "jobs" / "cli.py").is_file():
        ap.error(f"--repo {args.repo} is not a phi4ray checkout (no jobs/cli.py)")
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    big = f"{args.factor}x"
    corpora = {}
    for label, mult in ([] if args.datatrove_only else [("1x", 1)]) + [(big, args.factor)]:
        t0 = time.perf_counter()
        corpora[label] = write_corpus(args.work / f"corpus-{label}", int(args.base_mb * mult * 2**20),
                                      int(args.file_mb * 2**20))
        c = corpora[label]
        c["mb"] = sum(c[k]["bytes"] for k in ("prose", "html", "code")) / 2**20
        print(f"corpus {label}: " + ", ".join(f"{k} {c[k]['files']} files {c[k]['docs']} docs "
                                             f"{c[k]['bytes'] / 2**20:.1f} MB ({c[k]['salted_docs']} salted)"
                                             for k in ("prose", "html", "code")) + f" [{time.perf_counter() - t0:.0f} s]")
    if args.datatrove_only:
        compare_datatrove(corpora[big], big, None, args)
        return
    sizes = {label: run_size(label, c["inputs"], c["mb"], STAGES, args) for label, c in corpora.items()}
    repeat = run_size("1x-repeat", corpora["1x"]["inputs"], corpora["1x"]["mb"], ("curate", "tokenize"), args)
    same = compare_runs(sizes["1x"], repeat)
    r = ratios(*sizes.values())
    print_report(sizes, r, same, args.factor)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "corpora": corpora, "sizes": sizes,
               "repeat_1x": repeat, "same": same, "ratios": r}
    if args.datatrove:
        results["datatrove"] = compare_datatrove(corpora[big], big, sizes[big], args)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
