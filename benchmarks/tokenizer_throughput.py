"""Tokenizer throughput: our tiktoken path vs the exported HF tokenizer (what vLLM uses), same text.

Prints MB/s for each and the ratio. Text: the Python standard library's own sources.
Run: .venv/bin/python benchmarks/tokenizer_throughput.py
"""
import pathlib
import sysconfig
import tempfile
import time

from phi4ray.model.phi4_tokenizer import phi4_tokenizer


def corpus(max_bytes: int = 8 * 2**20) -> list[str]:
    docs, size = [], 0
    for p in sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        text = p.read_text(errors="replace")
        docs.append(text)
        size += len(text.encode())
        if size >= max_bytes:
            break
    return docs


def main() -> None:
    from transformers import AutoTokenizer

    docs = corpus()
    mb = sum(len(d.encode()) for d in docs) / 2**20
    tok = phi4_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        tok.save_hf(d)
        hf = AutoTokenizer.from_pretrained(d)
    t0 = time.perf_counter()
    ours = tok.encode_batch(docs, ordinary=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = hf(docs, add_special_tokens=False)["input_ids"]
    t_hf = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"corpus: {len(docs)} stdlib files, {mb:.1f} MB, {sum(map(len, ours))} tokens; identical ids in {same}/{len(docs)}")
    print(f"tiktoken (phi4ray): {mb / t_ours:6.1f} MB/s")
    print(f"HF tokenizer.json : {mb / t_hf:6.1f} MB/s")
    print(f"ratio phi4ray / HF: {t_hf / t_ours:.2f}x")


if __name__ == "__main__":
    main()
