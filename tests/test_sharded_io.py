"""Sharded load and streamed export over 2 gloo processes (no Ray): each rank reads only its rows of
the HF files into FSDP2 shards, and the export written from those shards is the plain export byte
for byte (the plain export is what test_hf loads through transformers)."""
from __future__ import annotations

import filecmp
import json
import os
import struct

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

from phi4ray.model.config import model_preset
from phi4ray.model.decoder import build_model
from phi4ray.model.hf import CheckpointError, export_hf, import_hf
from phi4ray.model.phi4_tokenizer import phi4_tokenizer
from phi4ray.model.safetensors_io import Writer
from phi4ray.train.sharded_io import load_sharded
from phi4ray.train.step import TrainConfig
from tests.conftest import free_port

# untied, and an odd vocabulary: the embedding and output rows split unevenly over 2 ranks
CFG = model_preset("tiny").replace(n_layers=2, vocab_size=515, tie_embeddings=False, embed_init_std=1.0)
SHARD_BYTES = 2**20  # several files, so the index is written and read too


def _reference():
    return build_model(CFG, seed=5).eval()


def _worker(rank: int, world: int, port: int, src: str, src_bf16: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    ref = _reference()
    want = ref.state_dict()
    model = load_sharded(CFG, src, TrainConfig(activation_checkpointing=True), "cpu", distributed=True)
    for name, p in model.named_parameters():
        name = name.replace("_checkpoint_wrapped_module.", "")
        assert p.to_local().shape[0] < p.shape[0], f"{name} is not sharded"
        assert torch.equal(p.full_tensor(), want[name]), name
    x = torch.randint(0, CFG.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the forward goes through FSDP's lazy init, which re-pads the shards
        assert (model(x) - ref(x)).abs().max().item() <= 1e-5
    export_hf(model, out, phi4_tokenizer(), max_shard_bytes=SHARD_BYTES)

    from_bf16 = load_sharded(CFG, src_bf16, TrainConfig(), "cpu", distributed=True)
    for name, p in from_bf16.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p.full_tensor(), want[name].bfloat16().float()), name
    dist.destroy_process_group()


def test_two_ranks_load_their_rows_and_export_the_plain_bytes(tmp_path):
    ref = _reference()
    src = export_hf(ref, tmp_path / "src", phi4_tokenizer(), max_shard_bytes=SHARD_BYTES)
    src_bf16 = export_hf(ref, tmp_path / "src_bf16", phi4_tokenizer(), dtype=torch.bfloat16)
    out = tmp_path / "out"
    assert len(json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]) == 3 + 6 * CFG.n_layers
    mp.spawn(_worker, args=(2, free_port(), str(src), str(src_bf16), str(out)), nprocs=2, join=True)
    names = sorted(os.listdir(src))
    assert sorted(os.listdir(out)) == names and sum(n.endswith(".safetensors") for n in names) > 1
    assert filecmp.cmpfiles(src, out, names, shallow=False)[0] == names
    back = import_hf(out)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_writer_matches_save_file(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {n: torch.randn(*s, generator=g).to(dtype) for n, s in
               [("model.layers.10.w", (3, 5)), ("model.layers.2.w", (7,)), ("lm_head.weight", (4, 2)), ("a", (1,))]}
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "pt"})
    shapes = {n: tuple(t.shape) for n, t in tensors.items()}
    with Writer(tmp_path / "ours.safetensors", shapes, dtype, {"format": "pt"}) as w:
        for name in w.names:  # rows in two pieces, as an export of [q; k; v] writes them
            w.write(name, [tensors[name][:1], tensors[name][1:]])
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="out of header order"):
        with Writer(tmp_path / "bad.safetensors", shapes, dtype, {"format": "pt"}) as w:
            w.write("model.layers.2.w", [tensors["model.layers.2.w"]])


def test_a_stage_may_change_context_and_rope_base_but_not_the_architecture(tmp_path):
    ref = _reference()
    src = export_hf(ref, tmp_path / "m", phi4_tokenizer())
    longer = CFG.replace(max_seq_len=2 * CFG.max_seq_len, rope_theta=250_000.0)
    model = load_sharded(longer, src, TrainConfig(), "cpu", distributed=False)
    assert model.cfg == longer
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"n_kv_heads: 2 there, 4 here"):
        load_sharded(CFG.replace(n_kv_heads=4), src, TrainConfig(), "cpu", distributed=False)


def test_data_shorter_than_the_header_says(tmp_path):
    src = export_hf(_reference(), tmp_path / "m", phi4_tokenizer())
    p = src / "model.safetensors"
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    p.write_bytes(p.read_bytes()[: 8 + n + 100])  # the header intact, the data cut
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable.*data_offsets"):
        import_hf(src)
