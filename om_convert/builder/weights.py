"""One external-data file shared by prefill.onnx and decode.onnx.

Tensors are appended as they stream in (one in memory at a time) at aligned offsets; the graphs
reference them by (location, offset, length) — ONNX external data — so the protos stay small and
both graphs share the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ascend_adapt.errors import ConfigError

ALIGN_BYTES = 64            # every tensor starts on a 64-byte boundary
ALIGN_LARGE_BYTES = 4096    # tensors of 1 MiB or more start on a page boundary (mmap-friendly)
LARGE_BYTES = 1 << 20


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives in the external-data file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    length: int


class ExternalWeights:
    """Append-only writer of the shared external-data file.

    Args:
        path: the file to create (its name is the `location` the graphs reference).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.location = self.path.name
        self.tensors: dict[str, StoredTensor] = {}
        self._f = open(self.path, "wb")
        self._pos = 0
        self.max_tensor_bytes = 0

    def add(self, name: str, array: np.ndarray) -> StoredTensor:
        """Append `array` under `name` (a name written before with equal bytes is shared)."""
        arr = np.ascontiguousarray(array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if name in self.tensors:
            t = self.tensors[name]
            if t.shape != arr.shape or t.dtype != arr.dtype.name:
                raise ConfigError(f"external tensor '{name}' written twice with different shapes/dtypes")
            return t
        align = ALIGN_LARGE_BYTES if arr.nbytes >= LARGE_BYTES else ALIGN_BYTES
        pad = (-self._pos) % align
        if pad:
            self._f.write(b"\0" * pad)
            self._pos += pad
        self._f.write(memoryview(arr.reshape(-1).view(np.uint8)))
        t = StoredTensor(name, arr.dtype.name, tuple(arr.shape), self._pos, arr.nbytes)
        self._pos += arr.nbytes
        self.tensors[name] = t
        self.max_tensor_bytes = max(self.max_tensor_bytes, arr.nbytes)
        return t

    def sink(self, name: str, array: np.ndarray) -> tuple[str, int, int]:
        """`GraphBuilder.external_sink` signature: (location, offset, length)."""
        t = self.add(name, array)
        return self.location, t.offset, t.length

    @property
    def nbytes(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
