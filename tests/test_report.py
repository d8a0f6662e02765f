"""The run report's PTS pivots: token texts readable in a table, read as a stream up to a limit."""
import json

from phi4ray.run.report import pivot_table


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
