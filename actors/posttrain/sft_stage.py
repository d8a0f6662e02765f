"""Stage `sft`: conversations -> packed rows with an assistant-only loss mask -> Ray Train.

Data: `sft.data` (JSONL/Parquet conversations) or, by default, the toy arithmetic domain's worked
solutions (phi4ray.toy.arith); with `sft.best_of_n`, also the best of N responses of the model SFT
starts from, per prompt, as its judge ranks them and the prompt's oracle allows
(actors/posttrain/judge.py, phi4ray/posttrain/judged_sft.py -> RUN/sft/best_of_n.jsonl, resumable).
Writes RUN/sft_tokens (tokens, doc_ids, loss_mask; one conversation per document, never split) and
RUN/models/sft; the counts hold the held-out loss before and after.
"""
from __future__ import annotations

import json

from actors.posttrain.judge import best_of_n_round
from actors.run.off_driver import on_worker
from actors.train.pretrain_stages import train_stage
from phi4ray.model.tokenizer import load_tokenizer
from phi4ray.posttrain.judge_prompts import best_of_n_files, best_of_n_queries, check_best_of_n_prompts
from phi4ray.run.console import say
from phi4ray.run.stage import Stage, StageResult, all_checks
from phi4ray.train.jobs import sft_job, worker_split_check
from phi4ray.train.sft import model_heldout_loss, pack_conversations, sft_conversations, write_sft_rows


def best_of_n(ctx, model: str) -> tuple[list, dict]:
    """(conversations, report) of best-of-N on `model`, served on the fleet while it runs."""
    out = ctx.run_dir / "sft"
    queries, read = best_of_n_queries(ctx.cfg, out)  # a bad file fails here, before an engine starts
    app = ctx.fleet.start(model)
    try:
        report = best_of_n_round(ctx.cfg, app, queries, out / "best_of_n.jsonl")
    finally:
        # pts serves the SFT model, of this shape, next: on CPU its weights are swapped in place
        ctx.fleet.release(app, keep=ctx.cluster.holding and ctx.cfg.serve.device == "cpu")
    say(f"sft: best-of-{ctx.cfg.sft.best_of_n}: {report['kept']} of {report['prompts_in']} prompts kept; "
        f"skipped {report['skipped']}")
    convs = [json.loads(line)["messages"] for line in (out / "best_of_n.jsonl").read_text().splitlines() if line]
    return convs, {**{k: report[k] for k in ("n", "prompts_in", "kept", "skipped", "judge_calls", "parse_failures")},
                   "prompts": read}


def run(ctx) -> StageResult:
    run_dir, cfg = ctx.run_dir, ctx.cfg
    tc = cfg.sft.train
    job = sft_job(run_dir, cfg)
    tok = load_tokenizer(job.init_from)  # the model SFT starts from renders its own chat format
    train, held, source = sft_conversations(cfg)
    judged, judged_counts = best_of_n(ctx, job.init_from) if cfg.sft.best_of_n else ([], None)
    train = train + judged
    packed = pack_conversations([tok.render_chat(c) for c in train], tc.seq_len, tok.pad_id)
    if packed.too_long:
        say(f"sft: {len(packed.too_long)} conversations longer than sft.train.seq_len={tc.seq_len} set aside")
    write_sft_rows(packed, run_dir / "sft_tokens")
    held_ids = [tok.render_chat(c) for c in held]
    gpu = cfg.serve.device == "gpu"

    def evaluate() -> dict:
        after = on_worker(model_heldout_loss, run_dir / "models" / "sft", held_ids, tc.seq_len, gpu=gpu)
        say(f"sft: held-out loss per assistant token {before:.3f} -> {after:.3f}")
        return {"conversations": len(train), "conversations_too_long": len(packed.too_long), **packed.stats,
                "heldout_conversations": len(held), "heldout_loss_before": before, "heldout_loss_after": after,
                **({"best_of_n": judged_counts} if judged_counts else {})}

    with ctx.cluster.session(min_cpus=4):  # one Ray for the measures before, the training, the measures after
        before = on_worker(model_heldout_loss, job.init_from, held_ids, tc.seq_len, gpu=gpu)
        return train_stage(ctx, job, {"source": source, "init_from": job.init_from, "rows": job.tokens_dir},
                           evaluate)


STAGE = Stage(
    name="sft",
    check=all_checks(worker_split_check("sft.train"), check_best_of_n_prompts),
    summary="supervised fine-tuning in the Phi-4 chat format, loss on assistant tokens only",
    run=run,
    # the judge's settings (dpo.judge_*) decide which best-of-N responses are kept
    sections=("sft", "arith", "seed", "midtrain.rope_theta", "model", "pts.queries_kind",
              "dpo.judge_url", "dpo.judge_model", "dpo.judge_api_key_env", "dpo.judge_structured"),
    files=best_of_n_files,
    reads=("init",),
    uses=("pretrain", "midtrain"),  # the newest model before SFT (an imported one skips both)
    outputs=("sft_tokens", "models/sft", "ray_train/sft", "checkpoints/sft"),
    headline=("steps", "heldout_loss_before", "heldout_loss_after"),
)
