"""MindSpore `.ckpt` files written and read one tensor at a time, without mindspore.

The format is protobuf (mindspore/train/checkpoint.proto, proto2):

    message Checkpoint  { repeated Value value = 1; }
    message Value       { required string tag = 1; optional TensorProto tensor = 2;
                          optional MapTensorProto maptensor = 3; }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
                          required bytes tensor_content = 3; }

Repeated fields of concatenated messages concatenate, so a file is a sequence of
`0x0A <len> Value` records. `mindspore.save_checkpoint` writes one record per slice of at most
512 MiB (every slice carries the full dims; `load_checkpoint` joins consecutive records with the
same tag), optionally followed by `b"crc_num"` and a 10-byte CRC. We write exactly those bytes,
streaming each tensor's data straight from its array (no serialized copy), and read them back
lazily: `CkptReader` scans the record headers once and reads one tensor's bytes on demand.
`mindspore.load_checkpoint` reads our files (tests check it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ascend_adapt.checkpoint import TensorInfo, canonical_name, numpy_dtype
from ascend_adapt.checkpoint.reader import TensorIndex
from ascend_adapt.errors import CheckpointError, UnsupportedError

SLICE_BYTES = 512 * 1024 * 1024  # mindspore.train.serialization.SLICE_SIZE (KB) · 1024

# MindSpore tensor_type strings <-> canonical dtype names
MS_TO_CANONICAL = {
    "Float16": "float16", "Float32": "float32", "Float64": "float64", "BFloat16": "bfloat16",
    "Int8": "int8", "Int16": "int16", "Int32": "int32", "Int64": "int64",
    "UInt8": "uint8", "UInt16": "uint16", "UInt32": "uint32", "UInt64": "uint64", "Bool": "bool",
}
CANONICAL_TO_MS = {v: k for k, v in MS_TO_CANONICAL.items()}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint((num << 3) | wire)


def record_header(tag: str, dims, tensor_type: str, content_len: int) -> bytes:
    """Bytes of one `Checkpoint.value` record up to (excluding) its tensor_content."""
    t = tag.encode()
    tensor = b"".join(_field(1, 0) + _varint(int(d)) for d in dims)
    tt = tensor_type.encode()
    tensor += _field(2, 2) + _varint(len(tt)) + tt + _field(3, 2) + _varint(content_len)
    tensor_len = len(tensor) + content_len
    value = _field(1, 2) + _varint(len(t)) + t + _field(2, 2) + _varint(tensor_len) + tensor
    value_len = len(value) + content_len
    return _field(1, 2) + _varint(value_len) + value


class CkptWriter:
    """Append tensors to a `.ckpt` file, one at a time (MindSpore's byte layout).

    Args:
        path: the file (its directory must exist). The caller makes the output atomic (the port
            writes into a temporary directory renamed when complete).
        slice_bytes: largest tensor_content per record (MindSpore: 512 MiB).
    """

    def __init__(self, path, slice_bytes: int = SLICE_BYTES):
        self.path = Path(path)
        self.slice_bytes = int(slice_bytes)
        self._f: BinaryIO | None = open(self.path, "wb")
        self.names: list[str] = []

    def write(self, name: str, array: np.ndarray) -> None:
        dtype = canonical_name(array.dtype)
        if dtype not in CANONICAL_TO_MS:
            raise UnsupportedError(f"tensor '{name}': dtype {dtype} has no MindSpore checkpoint type")
        dims = list(np.shape(array))
        arr = np.ascontiguousarray(array)  # (0-d arrays come back 1-d; dims keep the real shape)
        data = memoryview(arr.reshape(-1).view(np.uint8))
        n = len(data)
        starts = range(0, n, self.slice_bytes) if n else [0]
        for i in starts:
            chunk = data[i:i + self.slice_bytes]
            self._f.write(record_header(name, dims, CANONICAL_TO_MS[dtype], len(chunk)))
            self._f.write(chunk)
        self.names.append(name)

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---- reading ---------------------------------------------------------------------------------------
def _read_varint(f: BinaryIO, where: str) -> int:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise CheckpointError(f"{where}: unexpected end of file inside a record header",
                                  "the .ckpt file is truncated; re-save or re-convert it")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{where}: malformed varint in a record header", "the .ckpt file is corrupt")


class _Entry:
    __slots__ = ("dims", "tensor_type", "chunks")

    def __init__(self, dims, tensor_type):
        self.dims, self.tensor_type, self.chunks = dims, tensor_type, []


class CkptReader(TensorIndex):
    """A `.ckpt` file opened for streaming: headers scanned once, one tensor read at a time.

    Mirrors the parts of `CheckpointReader` that the adapters use (`infos`, `get`, `path`,
    `config`, `layout`), so `adapter.iter_canonical(reader, spec, layout=…)` works on it.

    Args:
        file: the `.ckpt` file.
        config: the model's config.json dict (kept for the adapters), default {}.
        directory: reported as `path` (the model directory), default the file's parent.
    """

    layout = "ckpt"

    def __init__(self, file, config: dict | None = None, directory=None):
        self.file = Path(file)
        self.path = Path(directory) if directory else self.file.parent
        self.config = config or {}
        if not self.file.is_file():
            raise CheckpointError(f"{self.file}: no such checkpoint file")
        self._entries: dict[str, _Entry] = {}
        self._scan()
        self._infos = {}
        for name, e in self._entries.items():
            if e.tensor_type not in MS_TO_CANONICAL:
                raise UnsupportedError(f"{self.file}: tensor '{name}' has type '{e.tensor_type}'",
                                       f"supported: {', '.join(MS_TO_CANONICAL)}")
            dtype = MS_TO_CANONICAL[e.tensor_type]
            info = TensorInfo(name, tuple(e.dims), dtype, self.file)
            got = sum(n for _, n in e.chunks)
            if got != info.nbytes:
                raise CheckpointError(
                    f"{self.file}: tensor '{name}' holds {got} bytes but shape {info.shape} {dtype} needs {info.nbytes}",
                    "the .ckpt file is truncated or corrupt; re-convert it")
            self._infos[name] = info

    def _scan(self) -> None:
        size = self.file.stat().st_size
        where = str(self.file)
        last = None
        with open(self.file, "rb") as f:
            pos = 0
            while pos < size:
                if size - pos == 17:
                    f.seek(pos)
                    if f.read(7) == b"crc_num":
                        break
                    f.seek(pos)
                key = _read_varint(f, where)
                if key != 0x0A:
                    raise CheckpointError(f"{where}: byte {pos} does not start a checkpoint record (key {key:#x})",
                                          "not a MindSpore .ckpt file, or it is encrypted / corrupt")
                rec_len = _read_varint(f, where)
                rec_end = f.tell() + rec_len
                if rec_end > size:
                    raise CheckpointError(f"{where}: a record at byte {pos} ends at {rec_end}, past the file's {size} bytes",
                                          "the .ckpt file is truncated; re-save or re-convert it")
                tag, tensor = self._parse_value(f, rec_end, where)
                dims, ttype, offset, n = tensor
                e = self._entries.get(tag)
                if e is None:
                    e = self._entries[tag] = _Entry(dims, ttype)
                elif last != tag:
                    raise CheckpointError(f"{where}: tensor '{tag}' appears twice (non-consecutive records)")
                e.chunks.append((offset, n))
                last = tag
                f.seek(rec_end)
                pos = rec_end

    @staticmethod
    def _parse_value(f: BinaryIO, end: int, where: str):
        tag, tensor = None, None
        while f.tell() < end:
            key = _read_varint(f, where)
            num, wire = key >> 3, key & 7
            if wire != 2:
                raise CheckpointError(f"{where}: unexpected field {num} (wire type {wire}) in a record")
            n = _read_varint(f, where)
            if num == 1:
                tag = f.read(n).decode("utf-8", "replace")
            elif num == 2:
                tensor = CkptReader._parse_tensor(f, f.tell() + n, where, tag)
            elif num == 3:
                raise UnsupportedError(f"{where}: '{tag}' is a MapParameter (maptensor)",
                                       "only dense tensors can be converted")
            else:
                f.seek(n, os.SEEK_CUR)
        if tag is None or tensor is None:
            raise CheckpointError(f"{where}: a record has no {'tag' if tag is None else 'tensor'} field",
                                  "the .ckpt file is corrupt")
        return tag, tensor

    @staticmethod
    def _parse_tensor(f: BinaryIO, end: int, where: str, tag):
        dims, ttype, offset, n = [], None, -1, 0
        while f.tell() < end:
            key = _read_varint(f, where)
            num, wire = key >> 3, key & 7
            if num == 1 and wire == 0:
                dims.append(_read_varint(f, where))
            elif num == 1 and wire == 2:  # packed dims
                stop = f.tell() + _read_varint(f, where)
                while f.tell() < stop:
                    dims.append(_read_varint(f, where))
            elif wire == 2:
                ln = _read_varint(f, where)
                if num == 2:
                    ttype = f.read(ln).decode()
                elif num == 3:
                    offset, n = f.tell(), ln
                    f.seek(ln, os.SEEK_CUR)
                else:
                    f.seek(ln, os.SEEK_CUR)
            elif wire == 0:
                _read_varint(f, where)
            else:
                raise CheckpointError(f"{where}: tensor '{tag}': unexpected wire type {wire}")
        if ttype is None:
            raise CheckpointError(f"{where}: tensor '{tag}' has no tensor_type", "the .ckpt file is corrupt")
        if ttype == "str":
            raise UnsupportedError(f"{where}: '{tag}' is a string entry, not a tensor")
        if dims == [0]:
            dims = []
        return dims, ttype, offset, n

    # ---- CheckpointReader-like API (infos / names / in / len: TensorIndex) -----------------
    def get(self, name: str) -> np.ndarray:
        try:
            info, e = self._infos[name], self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.file}: tensor '{name}' is not in the checkpoint") from None
        arr = np.empty(info.shape, dtype=numpy_dtype(info.dtype))
        buf = memoryview(arr.reshape(-1).view(np.uint8))
        pos = 0
        with open(self.file, "rb") as f:
            for offset, n in e.chunks:
                f.seek(offset)
                got = f.readinto(buf[pos:pos + n])
                if got != n:
                    raise CheckpointError(f"{self.file}: tensor '{name}' is truncated")
                pos += n
        return arr

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._infos:
            yield name, self.get(name)

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

