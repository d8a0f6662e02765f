"""safetensors files read by row range and written tensor by tensor, so that neither side ever holds
a whole checkpoint: a rank reads only the rows of each tensor it keeps, and an export writes each
tensor as it is gathered.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length, a
JSON header {name: {dtype, shape, data_offsets}} padded with spaces to 8 bytes, then the raw
row-major data. Plain reads, not mmap: mapped pages a process touched count in its RSS.
Writes match `safetensors.torch.save_file` byte for byte for one-dtype files (test_sharded_io).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, NamedTuple

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
CODES = {v: k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what is wrong."""


class Entry(NamedTuple):
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int                    # absolute byte offset of the tensor's first element

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(torch.Size(self.shape[1:]).numel())


def read_header(path: str | os.PathLike) -> dict[str, Entry]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if 8 + n > size:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        out = {}
        for name, h in header.items():
            if name == "__metadata__":
                continue
            if h["dtype"] not in DTYPES:
                raise ValueError(f"tensor {name} has dtype {h['dtype']}; phi4ray reads {sorted(DTYPES)}")
            begin, end = h["data_offsets"]
            e = Entry(path, DTYPES[h["dtype"]], tuple(h["shape"]), 8 + n + begin)
            if end - begin != e.row_bytes * (e.shape[0] if e.shape else 1) or 8 + n + end > size:
                raise ValueError(f"tensor {name}: data_offsets {h['data_offsets']} do not fit shape {e.shape} "
                                 f"or the file's {size} bytes")
            out[name] = e
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    return out


def read_rows(entry: Entry, start: int, stop: int, out: torch.Tensor) -> None:
    """Rows [start, stop) of the tensor into `out` (same shape as those rows, any dtype and device)."""
    direct = out.device.type == "cpu" and out.dtype == entry.dtype and out.is_contiguous()
    buf = out.detach() if direct else torch.empty(out.shape, dtype=entry.dtype)
    view = buf.view(-1).view(torch.uint8).numpy()
    with open(entry.path, "rb") as f:
        f.seek(entry.offset + start * entry.row_bytes)
        got = f.readinto(view)
    if got != view.nbytes:
        raise CheckpointError(f"{entry.path}: unreadable safetensors file (short read at row {start})")
    if not direct:
        out.detach().copy_(buf)


class Writer:
    """One safetensors file whose tensors (names, shapes, one dtype) are known up front and whose
    data arrives tensor by tensor, each in row-block pieces, in header order (`names`)."""

    def __init__(self, path: str | os.PathLike, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 metadata: dict[str, str]):
        # save_file's order: by dtype, then by name; one dtype here, so by name
        self.names = sorted(shapes)
        header: dict = {"__metadata__": metadata}
        pos = 0
        for name in self.names:
            nbytes = dtype.itemsize * int(torch.Size(shapes[name]).numel())
            header[name] = {"dtype": CODES[dtype], "shape": list(shapes[name]), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.path, self._header, self._dtype = Path(path), header, dtype
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._data0, self._done = 8 + len(raw), 0

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()

    def write(self, name: str, pieces: Iterable[torch.Tensor]) -> None:
        if self._done >= len(self.names) or name != self.names[self._done]:
            raise RuntimeError(f"{self.path}: tensor {name} written out of header order {self.names}")
        self._done += 1
        for t in pieces:
            self._f.write(t.detach().to("cpu", self._dtype).contiguous().view(-1).view(torch.uint8).numpy().data)
        end = self._header[name]["data_offsets"][1]
        if self._f.tell() - self._data0 != end:
            raise RuntimeError(f"{self.path}: tensor {name} should end at data byte {end}, "
                               f"got {self._f.tell() - self._data0}")
