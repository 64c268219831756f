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

# What the safetensors format (and its reference library, which refuses anything else) requires:
# a header of at most 100,000,000 bytes (the library's MAX_HEADER_SIZE), JSON nested at most 127
# levels deep (serde_json's recursion limit), and sizes that fit an unsigned 64-bit integer.
_MAX_HEADER_BYTES = 100_000_000
_MAX_JSON_DEPTH = 127
_U64_MAX = 2 ** 64 - 1
# dtypes the format defines that ascend-adapt has no numpy representation for
_FORMAT_ONLY_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64")
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


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


class _JsonObject(dict):
    """A parsed JSON object that remembers which of its keys were repeated."""

    repeated: frozenset = frozenset()


def _json_object(pairs):
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        seen, rep = set(), set()
        for k, _ in pairs:
            (rep if k in seen else seen).add(k)
        obj.repeated = frozenset(rep)
    return obj


def _header_int(text: str):
    # as the format's reader (serde_json) parses JSON integers: "-0" is a float (refused where an
    # integer is due), and an integer beyond 64 bits is a float, out of range past ~1.8e308
    if text == "-0":
        return -0.0
    if len(text) > 300 and math.isinf(float(text)):
        raise ValueError(f"number {text[:20]}... ({len(text)} digits) is out of range")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"'{name}' is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_json_tree(root) -> str | None:
    """Why the parsed header is not what a strict JSON reader accepts (too deep, a lone surrogate), or None."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_JSON_DEPTH:
            return f"nesting deeper than {_MAX_JSON_DEPTH} levels"
        if isinstance(node, dict):
            items = list(node.items())
            for k, v in items:
                stack.append((k, depth))
                stack.append((v, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds an unpaired UTF-16 surrogate escape"
    return None


def _is_u64(v) -> bool:
    return type(v) is int and 0 <= v <= _U64_MAX


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse a safetensors header and validate it against the file size.

    Reads only the 8-byte length and the header; see `parse_safetensors_header` for the checks.

    Returns:
        (tensors by name in header order, the `__metadata__` dict).

    Raises:
        CheckpointError: naming the file (and the tensor) with a hint.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                (n,) = struct.unpack("<Q", head)
                if n <= min(size - 8, _MAX_HEADER_BYTES):
                    head += f.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_safetensors_header(head, size, path)


def parse_safetensors_header(head: bytes, file_size: int, path="<bytes>"
                             ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a safetensors header as the format (and its reference library) requires.

    Checks: an 8-byte little-endian length N with 8 + N <= the file and N <= 100,000,000; N bytes
    of UTF-8 JSON holding one object (strict JSON: no NaN / Infinity, nesting <= 127, no unpaired
    surrogates); `__metadata__` absent, null or a str -> str map; every other entry an object with
    `dtype` (a known dtype string), `shape` (a list of unsigned ints), `data_offsets` (two unsigned
    ints, begin <= end), no repeated field, and end - begin = numel x itemsize (computed without
    overflowing 64 bits); the tensors, sorted by offsets, tile the data section exactly: the first
    starts at 0, each starts where the previous ends (no overlap, no gap) and the last ends at the
    end of the file.

    Args:
        head: the first bytes of the file (at least 8 + N when the length is sane).
        file_size: the size of the whole file in bytes.
        path: the file, for messages and for the returned `TensorInfo`s.

    Returns:
        (tensors by name in header order, the `__metadata__` dict).

    Raises:
        CheckpointError: naming the file and the tensor, with a hint.
    """
    path = Path(path)
    fix = "the file is truncated or corrupt: re-download it or re-save it with the safetensors library"
    if file_size < 8 or len(head) < 8:
        raise CheckpointError(f"{path}: file is {file_size} bytes, too short for a safetensors header", fix)
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > file_size:
        raise CheckpointError(f"{path}: header length {n} exceeds the file size ({file_size} bytes)", fix)
    if n > _MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: header length {n} exceeds the format's limit of {_MAX_HEADER_BYTES} bytes", fix)
    if len(head) < 8 + n:
        raise CheckpointError(f"{path}: header length {n}, but only {len(head) - 8} header bytes were given", fix)

    def bad(why: str, hint: str = fix) -> CheckpointError:
        return CheckpointError(f"{path}: {why}", hint)

    try:
        text = head[8:8 + n].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_json_object, parse_int=_header_int,
                            parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError as exc:
        raise bad(f"safetensors header is not valid UTF-8 (byte {exc.start} of the header)") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"safetensors header is not valid JSON ({str(exc)[:200] or 'nesting is too deep'})") from None
    if not isinstance(header, dict):
        raise bad(f"safetensors header is not valid JSON: expected an object, got {type(header).__name__}")
    why = _check_json_tree(header)
    if why:
        raise bad(f"safetensors header is not valid JSON ({why})")
    if "__metadata__" in header.repeated:
        raise bad("safetensors header has '__metadata__' twice")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad(f"'__metadata__' must map strings to strings, got {_shown(meta)}")
    data_start = 8 + n
    data_len = file_size - data_start
    out: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        where = f"tensor '{name}'"
        if not isinstance(entry, dict):
            raise bad(f"{where}: header entry is {_shown(entry)}, expected an object with dtype, shape, data_offsets")
        rep = [k for k in _ENTRY_FIELDS if k in entry.repeated]
        if rep:
            raise bad(f"{where}: header entry repeats the field '{rep[0]}'")
        missing = [k for k in _ENTRY_FIELDS if k not in entry]
        if missing:
            raise bad(f"{where}: header entry has no '{missing[0]}'")
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(tag, str) or (tag not in SAFETENSORS_TO_CANONICAL and tag not in _FORMAT_ONLY_DTYPES):
            raise bad(f"{where} has unknown dtype " + (f"'{tag}'" if isinstance(tag, str) else _shown(tag)),
                      f"supported safetensors dtypes: {', '.join(SAFETENSORS_TO_CANONICAL)}")
        if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
            raise bad(f"{where}: shape {_shown(shape)} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
            raise bad(f"{where}: data_offsets {_shown(offsets)} is not two non-negative integers [begin, end]")
        begin, end = offsets
        if end < begin:
            raise bad(f"{where}: data_offsets [{begin}, {end}] end before they begin")
        if tag in _FORMAT_ONLY_DTYPES:
            raise bad(f"{where} has dtype '{tag}', which ascend-adapt cannot read",
                      f"supported safetensors dtypes: {', '.join(SAFETENSORS_TO_CANONICAL)}; "
                      "re-save the tensor in one of them")
        dtype = SAFETENSORS_TO_CANONICAL[tag]
        numel = 1
        for d in shape:
            numel *= d
            if numel > _U64_MAX:
                break
        if numel > _U64_MAX or numel * ITEMSIZE[dtype] * 8 > _U64_MAX:
            raise bad(f"{where}: shape {_shown(shape)} {dtype} has more bytes than a 64-bit size can hold")
        expected = numel * ITEMSIZE[dtype]
        if end - begin != expected:
            raise bad(f"{where} spans {end - begin} bytes but shape {tuple(shape)} {dtype} needs {expected}")
        if data_start + end > file_size:
            raise bad(f"{where} ends at byte {data_start + end} but the file has {file_size} bytes")
        spans.append((begin, end, name))
        out[name] = TensorInfo(name, tuple(shape), dtype, path, data_start + begin)
    # the tensors tile the data section: sorted by offsets, each starts where the previous ended
    pos, prev = 0, None
    layout_fix = "re-save the file with the safetensors library (tensors must not overlap or leave gaps)"
    for begin, end, name in sorted(spans):
        if begin < pos:
            raise bad(f"tensor '{name}' (bytes [{begin}, {end}) of the data section) overlaps tensor "
                      f"'{prev[2]}' (bytes [{prev[0]}, {prev[1]}))", layout_fix)
        if begin > pos:
            raise bad(f"tensor '{name}' starts at byte {begin} of the data section, leaving bytes "
                      f"[{pos}, {begin}) unused", layout_fix)
        pos, prev = end, (begin, end, name)
    if pos != data_len:
        last = f"the last tensor '{prev[2]}'" if prev else "the header (it lists no tensors)"
        raise bad(f"the data section has {data_len} bytes but its tensors cover {pos}: "
                  f"{data_len - pos} bytes after {last} belong to no tensor", fix)
    return out, dict(meta)


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
