"""The run report: PTS pivots (token texts readable in a table, read as a stream up to a limit), the
synthesis funnel with kept examples, DPO's two rounds side by side."""
import json

from phi4ray.run.report import pivot_table, synthesis_funnel, write_report


def test_pivot_table_shows_token_texts_and_stops_at_the_limit(tmp_path):
    f = tmp_path / "queries.jsonl"
    pair = {"query_id": "q1", "prompt_text": "<|im_start|>user\\nWhich? (A) 2 | (B) 3\\n", "chosen_text": " (B",
            "rejected_text": "\n", "p_before": 0.4, "p_after": 0.9}
    f.write_text("".join(json.dumps({"query_id": f"q{i}", "pairs": [pair] * 3}) + "\n" for i in range(10)))
    table = pivot_table(f, limit=4)
    rows = [r for r in table if r.startswith("| q1")]
    assert len(rows) == 4  # the first query's three pairs, then one of the second's (its id is q1 too)
    assert "` (B`" in rows[0] and "`\\n`" in rows[0] and "0.40 | 0.90" in rows[0]
    assert "\\|" in rows[0]  # a | in the text cannot break the table
    assert pivot_table(tmp_path / "missing.jsonl") == []


def test_paired_change_cancels_the_spread_between_queries():
    from phi4ray.posttrain.heldout import interval95, paired_change

    before = {"per_query": {"a": 0.1, "b": 0.5, "c": 0.9}}
    after = {"per_query": {"a": 0.2, "b": 0.6, "c": 1.0}}
    change, ci = paired_change(before, after)
    assert abs(change - 0.1) < 1e-12 and ci < 1e-9  # every query up by 0.1: no doubt about it
    assert interval95(list(before["per_query"].values())) > 0.4  # each figure alone is wide


def test_synthesis_funnel_shows_each_step_and_two_kept_examples():
    ex = lambda i, status: {"seed_id": f"s{i}", "status": status, "seed": f"seed {i} | x", "output": f"out {i}"}  # noqa: E731
    rep = {"teacher": "smol", "seeds_from": "curated", "outputs": {"synthetic": 3},
           "steps": {"rewrite": {"seeds_in": 4, "rows_out": 12, "ok": 3, "dropped": {"corrupt": 9}, "parse_rate": 0.75,
                                 "examples": [ex(1, "ok"), ex(2, "ok"), ex(3, "ok")]},
                     "revise": {"seeds_in": 4, "rows_out": 4, "ok": 0, "dropped": {"below_threshold": 4},
                                "parse_rate": None, "examples": [ex(4, "below_threshold")]}},
           "toy": {"generated": 10, "kept": 7, "rejected": 3}}
    text = "\n".join(synthesis_funnel(rep))
    assert "| rewrite | 4 | 12 | 3 | 0.75 | corrupt 9 |" in text and "| revise | 4 | 4 | 0 | - | below_threshold 4 |" in text
    assert "| toy (no teacher) | 10 | 10 | 7 |" in text
    assert "`s1`" in text and "`s2`" in text and "`s3`" not in text  # two kept examples, not three
    assert "`s4`" not in text and "**revise**: no row kept" in text  # a dropped row is no example
    assert "seed 1 \\| x" in text  # a | in a seed cannot break the list


def test_both_dpo_rounds_in_one_table(tmp_path):
    from jobs.registry import STAGES
    (tmp_path / "manifests").mkdir()
    for name, after in (("dpo", 0.4), ("dpo2", 0.5)):
        counts = {"train_pairs": 8, "heldout_pairs": 2, "heldout_success_before": 0.3, "heldout_success_after": after,
                  **({"judge_round": {"pairs": 10, "parse_failures": 0}} if name == "dpo2" else {})}
        (tmp_path / "manifests" / f"{name}.json").write_text(json.dumps({"complete": True, "counts": counts}))
    text = write_report(tmp_path, STAGES).read_text()
    assert "| dpo | 8 / 2 | 0.300" in text and "| dpo2 | 8 / 2 | 0.300" in text and "0.500" in text
    assert 'DPO round 2\'s judge: {"pairs": 10, "parse_failures": 0}' in text
