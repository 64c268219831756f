"""safetensors read / write without loading whole files.

Format: 8-byte little-endian header length N, N bytes of JSON
(`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data
block; offsets are relative to the start of the data block.

Reading parses the header only; a tensor is read with one `readinto` of exactly its bytes.
Writing takes the full list of (name, shape, dtype) first, writes the header, then each tensor at
its offset, in any order — so a converter can stream tensors one at a time — to a temporary file
that is renamed when every tensor has been written.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, OutputExistsError
from .dtypes import (CANONICAL_TO_SAFETENSORS, ITEMSIZE, SAFETENSORS_TO_CANONICAL,
                     canonical_name, numpy_dtype)

_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, without its data.

    Attributes:
        name: the key in the checkpoint.
        shape: dimensions.
        dtype: canonical dtype name ("float16", "bfloat16", …).
        file: the file that holds it.
        offset_bytes: absolute byte offset of the data in `file` (safetensors), or -1.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset_bytes: int = -1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header and validate it against the file size.

    Returns:
        (tensors by name in file order, the `__metadata__` dict).

    Raises:
        CheckpointError: truncated file, invalid JSON, unknown dtype, offsets outside the file or
            not matching the shape.
    """
    path = Path(path)
    fix = "the file is truncated or corrupt: re-download or re-save it"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too short for a safetensors header", fix)
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, _MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{path}: header length {n} exceeds the file size ({size} bytes)", fix)
            header_bytes = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        header = json.loads(header_bytes)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})", fix) from None
    meta = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            tag, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has a malformed header entry {entry!r}", fix) from None
        if tag not in SAFETENSORS_TO_CANONICAL:
            raise CheckpointError(
                f"{path}: tensor '{name}' has unknown dtype '{tag}'",
                f"supported safetensors dtypes: {', '.join(SAFETENSORS_TO_CANONICAL)}",
            )
        dtype = SAFETENSORS_TO_CANONICAL[tag]
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected or begin < 0:
            raise CheckpointError(
                f"{path}: tensor '{name}' spans {end - begin} bytes but shape {shape} {dtype} needs {expected}", fix)
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: tensor '{name}' ends at byte {data_start + end} but the file has {size} bytes", fix)
        out[name] = TensorInfo(name, shape, dtype, path, data_start + begin)
    return out, meta


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read exactly one tensor's bytes from its safetensors file."""
    arr = np.empty(info.shape, dtype=numpy_dtype(info.dtype))
    with open(info.file, "rb") as f:
        f.seek(info.offset_bytes)
        got = f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
    if got != info.nbytes:
        raise CheckpointError(f"{info.file}: tensor '{info.name}' is truncated ({got} of {info.nbytes} bytes)")
    return arr


class SafetensorsWriter:
    """Write a safetensors file tensor by tensor, atomically.

    Args:
        path: the final file.
        specs: every tensor to be written, as (name, shape, dtype) in file order.
        metadata: string → string `__metadata__`.
        force: replace an existing file.

    Use as a context manager; `write(name, array)` in any order. On exit without error every
    tensor must have been written; the temporary file is then renamed to `path`. On error the
    temporary file is removed.
    """

    def __init__(self, path, specs: Sequence[tuple[str, Sequence[int], str]],
                 metadata: Mapping[str, str] | None = None, force: bool = False):
        self.path = Path(path)
        if self.path.exists() and not force:
            raise OutputExistsError(self.path)
        header: dict = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        self._layout: dict[str, tuple[int, tuple[int, ...], str]] = {}
        off = 0
        for name, shape, dtype in specs:
            dtype = canonical_name(dtype)
            if name in self._layout:
                raise CheckpointError(f"tensor '{name}' is listed twice for {self.path}")
            shape = tuple(int(d) for d in shape)
            nbytes = math.prod(shape) * ITEMSIZE[dtype]
            header[name] = {"dtype": CANONICAL_TO_SAFETENSORS[dtype], "shape": list(shape),
                            "data_offsets": [off, off + nbytes]}
            self._layout[name] = (off, shape, dtype)
            off += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # 8-byte aligned data block
        self._data_start = 8 + len(blob)
        self._total = self._data_start + off
        self._written: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self._fd, struct.pack("<Q", len(blob)) + blob)
        os.ftruncate(self._fd, self._total)
        self._force = force

    def write(self, name: str, array) -> None:
        """Write one tensor (numpy array; converted to the declared dtype only if identical kind)."""
        if name not in self._layout:
            raise CheckpointError(f"tensor '{name}' was not declared for {self.path}")
        off, shape, dtype = self._layout[name]
        arr = np.ascontiguousarray(array)
        if tuple(arr.shape) != shape:
            raise CheckpointError(f"tensor '{name}': shape {tuple(arr.shape)} != declared {shape}")
        if canonical_name(arr.dtype) != dtype:
            raise CheckpointError(f"tensor '{name}': dtype {arr.dtype} != declared {dtype}")
        mv = memoryview(arr.reshape(-1).view(np.uint8))
        pos = self._data_start + off
        while len(mv):
            n = os.pwrite(self._fd, mv, pos)
            mv, pos = mv[n:], pos + n
        self._written.add(name)

    def close(self) -> None:
        missing = [n for n in self._layout if n not in self._written]
        if missing:
            self.abort()
            raise CheckpointError(f"{self.path}: {len(missing)} declared tensors were never written, e.g. '{missing[0]}'")
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self.path.exists() and not self._force:
            os.unlink(self._tmp)
            raise OutputExistsError(self.path)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp.exists():
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def save_safetensors(path, tensors: Mapping[str, np.ndarray], metadata=None, force: bool = False) -> Path:
    """Write a dict of arrays to one safetensors file (atomic)."""
    specs = [(k, v.shape, canonical_name(v.dtype)) for k, v in tensors.items()]
    with SafetensorsWriter(path, specs, metadata, force) as w:
        for k, v in tensors.items():
            w.write(k, v)
    return Path(path)


def plan_shards(specs: Iterable[tuple[str, Sequence[int], str]], max_shard_bytes: int) -> list[list[tuple]]:
    """Split tensor specs into shards of at most `max_shard_bytes` (a tensor is never split)."""
    shards: list[list[tuple]] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * ITEMSIZE[canonical_name(spec[2])]
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards


def shard_file_names(prefix: str, n: int, ext: str) -> list[str]:
    """HF shard names: `model-00001-of-00003.safetensors` (or the single `model.safetensors`)."""
    if n == 1:
        return [f"{prefix}.{ext}"]
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}.{ext}" for i in range(n)]
