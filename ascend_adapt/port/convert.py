"""Streamed weight conversion HF ↔ MindSpore, about one tensor in memory.

HF (or Meta) checkpoint → `port_to_mindspore` → directory with `model.ckpt` (MindSpore's
protobuf checkpoint, written record by record by `CkptWriter`) or `model.safetensors` (declared
up front, written tensor by tensor by `SafetensorsWriter`), named "ours" (canonical names, what
our MindSpore cells load) or "mindformers" (MindFormers' names, reference §4.1 / §4.2), plus
config.json, tokenizer files and `ascend_adapt_port.json`.

With `quantize="w8a16"|"w8a8"` ("ours" naming) the Linears that `export --quantize` quantizes are
written int8 [out, in] with `<prefix>.weight_scale` (W8A8 also `.input_scale` and, where 1/s does
not fold into the norm, `.smooth_scale`), by the same `ascend_adapt.quant.weights` functions and
W8A8 plan as the export (`QuantizedPort`); the manifest records it under "quantization".

`port_to_hf` goes back: the port output → HF names and layout in (sharded) safetensors. With the
source dtype kept (no `dtype=`), HF → MindSpore → HF is bit-exact for every parameter tensor
(buffers the adapters ignore, e.g. ChatGLM-6B's recomputed rotary `inv_freq`, are dropped).

Both directions check every tensor's presence and shape against the config before writing
anything, and write into a temporary directory renamed only when complete: a bad input leaves no
output behind.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import queue
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ascend_adapt import __version__
from ascend_adapt.errors import CheckpointError, ConfigError, UnsupportedError
from ascend_adapt.fsutil import atomic_output, check_output

from .artifact import (FORMATS, MANIFEST_NAME, MANIFEST_VERSION, NAMINGS, Weights, expected_shapes,
                       layout_entries, open_weights, tensor_crc32)

DTYPE_ALIASES = {"fp16": "float16", "float16": "float16", "half": "float16", "fp32": "float32",
                 "float32": "float32", "float": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
HF_SHARD_BYTES = 5 * 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".mindir")


def normalize_dtype(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return DTYPE_ALIASES[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype '{name}'", "use fp16, bf16 or fp32 (or leave it out to keep the source's)") from None


def _cast(arr: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None or arr.dtype.kind not in "fV" or str(arr.dtype) == dtype:
        return arr
    from ascend_adapt.checkpoint import numpy_dtype

    return arr.astype(numpy_dtype(dtype))


def regroup(canonical: Iterable[tuple[str, np.ndarray]], targets: list, adapter, spec,
            dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Canonical stream → the target layout's tensors, emitted as soon as each is complete.

    A target tensor fused from several canonical ones (ChatGLM's QKV) is merged when its last
    part arrives; the tables list parts together, so at most one fused group is buffered.
    """
    wanted = {c: e for e in targets for c in e.canonical}
    buf: dict[str, np.ndarray] = {}
    for name, arr in canonical:
        e = wanted.get(name)
        if e is None:
            continue
        buf[name] = _cast(arr, dtype)
        if all(c in buf for c in e.canonical):
            parts = [buf.pop(c) for c in e.canonical]
            yield e.source, np.ascontiguousarray(adapter.merge(e, parts, spec))
    if buf:
        raise CheckpointError(f"conversion left parts of fused tensors unwritten: {sorted(buf)}")


def plan_targets(weights: Weights, present: dict[str, str], layout: str, dtype: str | None):
    """Target entries (those whose canonical tensors are all present) and their (name, shape, dtype)."""
    entries, specs = [], []
    shapes = expected_shapes(weights.adapter, weights.spec, layout)
    for e in layout_entries(weights.adapter, weights.spec, layout):
        have = [c for c in e.canonical if c in present]
        if not have:
            if e.optional:
                continue
            raise CheckpointError(f"{weights.path}: nothing provides '{e.source}' ({', '.join(e.canonical)})")
        if len(have) != len(e.canonical):
            missing = sorted(set(e.canonical) - set(have))
            raise CheckpointError(f"{weights.path}: '{e.source}' needs {missing}, which the source lacks")
        src_dtype = present[e.canonical[0]]
        out_dtype = dtype if (dtype and src_dtype in ("float16", "float32", "bfloat16", "float64")) else src_dtype
        entries.append(e)
        specs.append((e.source, tuple(shapes[e.source]), out_dtype))
    return entries, specs


def side_files(directory: Path, exclude: Iterable[str] = ()) -> list[Path]:
    """config.json, tokenizer files, remote code… everything in `directory` that is not weights."""
    skip = set(exclude)
    out = []
    for p in sorted(Path(directory).iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in skip:
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        out.append(p)
    return out


def _source_record(weights: Weights) -> dict:
    files = []
    for f in getattr(weights.reader, "shards", None) or []:
        st = Path(f).stat()
        files.append({"name": Path(f).name, "size_bytes": st.st_size, "mtime": int(st.st_mtime)})
    cfg = weights.path / "config.json"
    return {
        "path": str(weights.path.resolve()),
        "layout": getattr(weights.reader, "layout", None),
        "naming": weights.layout,
        "files": files,
        "total_bytes": sum(i.nbytes for i in weights.reader.infos().values()),
        "config_sha256": hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.is_file() else None,
        "torch_dtype": weights.spec.torch_dtype,
    }


class _Progress:
    def __init__(self, total_bytes: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                            dynamic_ncols=True, leave=False)

    def update(self, name: str, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name[-40:], refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _nbytes(specs) -> int:
    from ascend_adapt.checkpoint.dtypes import ITEMSIZE

    return sum(int(np.prod(s, dtype=np.int64)) * ITEMSIZE[d] for _, s, d in specs)


class _SafetensorsSink:
    """Sharded safetensors output with every tensor declared up front (+ HF index when sharded)."""

    def __init__(self, directory: Path, specs: list, max_shard_bytes: int | None, metadata: dict,
                 prefix: str = "model"):
        from ascend_adapt.checkpoint import SafetensorsWriter, plan_shards, shard_file_names

        shards = plan_shards(specs, max_shard_bytes) if max_shard_bytes else [specs]
        self.files = shard_file_names(prefix, len(shards), "safetensors")
        self.directory = directory
        self._writers, self._where = [], {}
        for fname, shard in zip(self.files, shards):
            self._writers.append(SafetensorsWriter(directory / fname, shard, metadata=metadata))
            for name, _, _ in shard:
                self._where[name] = len(self._writers) - 1
        self._total = _nbytes(specs)

    def write(self, name: str, arr: np.ndarray) -> None:
        self._writers[self._where[name]].write(name, arr)

    def close(self) -> None:
        for w in self._writers:
            w.close()
        if len(self.files) > 1:
            wmap = {n: self.files[i] for n, i in self._where.items()}
            (self.directory / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": self._total}, "weight_map": wmap}, indent=2))

    def abort(self) -> None:
        for w in self._writers:
            w.abort()


class _CkptSink:
    def __init__(self, file: Path, specs: list):
        from .ckpt import CkptWriter

        self.files = [file.name]
        self._writer = CkptWriter(file)
        self._expected = {n for n, _, _ in specs}

    def write(self, name: str, arr: np.ndarray) -> None:
        self._writer.write(name, arr)

    def close(self) -> None:
        self._writer.close()
        missing = self._expected - set(self._writer.names)
        if missing:
            raise CheckpointError(f"{len(missing)} planned tensors were never written, e.g. '{sorted(missing)[0]}'")

    def abort(self) -> None:
        self._writer.close()


def read_ahead(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate `items` in a thread, `depth` items ahead, so reading the next tensor from disk
    overlaps casting / checksumming / writing this one (file reads, zlib.crc32 and numpy copies
    release the GIL). At most depth + 2 items are alive at once."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for it in items:
                if not put((True, it)):
                    return
            put((True, end))
        except BaseException as exc:  # re-raised in the consumer
            put((False, exc))

    t = threading.Thread(target=work, name="port-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            ok, it = q.get()
            if not ok:
                raise it
            if it is end:
                return
            yield it
            del it
    finally:
        stop.set()
        t.join()


def _stream_into(sink, weights: Weights, entries: list, dtype: str | None, progress: _Progress,
                 verify: bool = True, overlap: bool = True) -> dict:
    """Write the target tensors; returns {name: {shape, dtype, crc32}}."""
    canonical = weights.iter_canonical(verify=verify)
    if overlap:
        canonical = read_ahead(canonical)
    return _drain(sink, regroup(canonical, entries, weights.adapter, weights.spec, dtype), progress)


def _drain(sink, tensors, progress: _Progress) -> dict:
    """Write each (name, array) of `tensors` into `sink` and close it (abort it on any error);
    returns {name: {shape, dtype, crc32}}."""
    record = {}
    try:
        for name, arr in tensors:
            sink.write(name, arr)
            record[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "crc32": tensor_crc32(arr)}
            progress.update(name, arr.nbytes)
            del arr
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        progress.close()
    return record


class QuantizedPort:
    """What `port --quantize` writes: the decision per tensor and the manifest record.

    Attributes:
        mode: "w8a16" / "w8a8".
        quantizer: the export path's `LinearQuantizer` (`om_convert/builder/quantize.py`): which
            Linears are int8 (`quantizes`), the same decision `export --quantize` makes.
        plan: the `W8A8Plan` (w8a8) or None.
        group_size: w8a16 group size or None.
        folds: norm tensor → smoothing vector it is divided by (w8a8, pre-norm families).
        smooth: quantized weights whose 1/s is stored (`<prefix>.smooth_scale`), not folded.
        specs: (name, shape, dtype) of every tensor written, in order.
        out_dtypes: name → dtype of the float tensors.
    """

    def __init__(self, mode, quantizer, plan, group_size, specs_float: list):
        from .artifact import quant_tensors

        self.mode, self.quantizer, self.plan, self.group_size = mode, quantizer, plan, group_size
        self.folds = plan.folds() if plan is not None else {}
        self.smooth = []
        if plan is not None:
            for name, _, _ in specs_float:
                lp = plan.get(name) if quantizer.quantizes(name) else None
                if lp is not None and (lp.fold is None or lp.fold not in self.folds):
                    self.smooth.append(name)
        self.quantized = [n for n, _, _ in specs_float if quantizer.quantizes(n)]
        self._int8 = set(self.quantized)
        self.out_dtypes = {n: d for n, _, d in specs_float}
        extras = quant_tensors({"mode": mode, "group_size": group_size, "quantized": self.quantized,
                                "smooth_scale": self.smooth}, {n: s for n, s, _ in specs_float})
        self.specs = []
        for n, shape, d in specs_float:
            if n in extras:
                self.specs.append((n, shape, "int8"))
                self.specs.extend((e, es, "float32") for e, es in extras[n])
            else:
                self.specs.append((n, shape, d))
        self.scale_bytes = 0

    def tensors(self, name: str, arr: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """The tensor(s) written for canonical tensor `name`."""
        from ascend_adapt.quant.weights import quantize_groupwise, quantize_per_channel

        fold = self.folds.get(name)
        if fold is None and name.endswith(".bias"):
            fold = self.folds.get(name[:-len(".bias")] + ".weight")
        if fold is not None:  # 1/s of the Linears reading this norm, folded in (as the export does)
            yield name, _cast(np.asarray(arr, np.float32) / fold, self.out_dtypes[name])
            return
        if name not in self._int8:
            yield name, _cast(arr, self.out_dtypes[name])
            return
        prefix = name[:-len(".weight")]
        if self.mode == "w8a16" and self.group_size:
            q, scale = quantize_groupwise(arr, self.group_size)
        else:  # w8a8: W·diag(s) taken in float32 inside the quantizer
            lp = self.plan.get(name) if self.mode == "w8a8" else None
            q, scale = quantize_per_channel(arr, lp.smooth if lp is not None else None)
        yield name, q
        extra = [(prefix + ".weight_scale", np.ascontiguousarray(scale, np.float32))]
        if self.mode == "w8a8":
            lp = self.plan.get(name)
            extra.append((prefix + ".input_scale", np.asarray([lp.act_scale], np.float32)))
            if name in self.smooth:  # what the cell multiplies x by: 1/s, as the export's Mul constant
                extra.append((prefix + ".smooth_scale", (1.0 / lp.smooth.astype(np.float64)).astype(np.float32)))
        for n, a in extra:
            self.scale_bytes += a.nbytes  # the scale tensors in the file
            yield n, a

    def record(self) -> dict:
        """The manifest's "quantization" entry (export.json's, plus the MindSpore tensor layout)."""
        lq = self.quantizer
        lq.quantized = list(self.quantized)
        lq.scale_bytes = int(self.scale_bytes)
        rec = lq.manifest()
        rec["ops"] = (["anti_quant (Cast, Mul)", "MatMul"] if self.mode == "w8a16"
                      else ["quant (AscendQuant arithmetic)", "int8_matmul (int32)", "dequant"])
        rec["smooth_scale"] = list(self.smooth)
        rec["tensors"] = ("<prefix>.weight int8 [out, in]; <prefix>.weight_scale float32 "
                          + ("[out, in/group_size]" if self.group_size else "[out]")
                          + ("; <prefix>.input_scale float32 [1] (static activation scale); <prefix>.smooth_scale "
                             "float32 [in] (1/s, where not folded into the norm)" if self.mode == "w8a8" else ""))
        return rec


def quantized_plan(weights: Weights, present: dict, specs: list, quantize, *, group_size=None, calib=None,
                   smooth_alpha=None, keep_fp16=None, w8a8_plan=None, note=None) -> QuantizedPort:
    """Validate the quantization options against the model (group size dividing every Linear's
    input) and plan W8A8 (calibration with the fp32 golden) — all before anything is written."""
    from ascend_adapt.om_convert.builder.quantize import LinearQuantizer, prepare

    if weights.layout == "meta":
        raise UnsupportedError(f"{weights.path}: --quantize needs a Hugging Face checkpoint (config.json)",
                               "convert the Meta checkpoint with transformers' convert_llama_weights_to_hf first")
    if group_size is not None:  # before a calibration run
        LinearQuantizer(quantize, weights.spec, np.float32, group_size=group_size)
    if w8a8_plan is not None:
        if str(quantize).lower() != "w8a8" or any(o is not None for o in (calib, smooth_alpha, keep_fp16)):
            raise ConfigError("a W8A8 plan goes with quantize='w8a8' and no calib / smooth_alpha / keep_fp16",
                              "pass either the plan or the calibration options")
        q = {"quantize": "w8a8", "group_size": None, "w8a8_plan": w8a8_plan}
    else:
        q = prepare(weights.path, quantize, group_size=group_size, calib=calib, smooth_alpha=smooth_alpha,
                    keep_fp16=keep_fp16, note=note)
    lq = LinearQuantizer(q["quantize"], weights.spec, np.float32, group_size=q["group_size"], plan=q["w8a8_plan"])
    return QuantizedPort(q["quantize"], lq, q["w8a8_plan"], q["group_size"], specs)


def _stream_quantized(sink, weights: Weights, quant: QuantizedPort, progress: _Progress) -> dict:
    """Write a quantized port, one canonical tensor in memory (+ its int8 copy); returns the record."""
    tensors = (out for name, arr in read_ahead(weights.iter_canonical()) for out in quant.tensors(name, arr))
    return _drain(sink, tensors, progress)


def port_to_mindspore(src, out, *, naming: str = "ours", fmt: str = "ckpt", dtype: str | None = None,
                      force: bool = False, progress: bool = True, max_shard_bytes: int | None = None,
                      after: Callable[[Path], None] | None = None, quantize: str | None = None,
                      group_size: int | None = None, calib=None, smooth_alpha: float | None = None,
                      keep_fp16=None, w8a8_plan=None, note: Callable[[str], None] | None = None) -> Path:
    """Convert an HF (or Meta) checkpoint directory into a MindSpore checkpoint directory.

    Args:
        src: the HF / Meta model directory.
        out: the output directory (written under a temporary name, renamed when complete).
        naming: "ours" (canonical names) or "mindformers" (MindFormers' checkpoint names).
        fmt: "ckpt" (one `model.ckpt`) or "safetensors" (`model.safetensors`, or shards + index
            with `max_shard_bytes`).
        dtype: cast floating tensors to "float16" / "bfloat16" / "float32" (default: keep).
        force: replace an existing `out`.
        progress: show a tqdm bar (bytes).
        max_shard_bytes: safetensors only: largest shard.
        after: called with the (temporary) output directory once the weights and the manifest
            are written, before the rename (the CLI exports MindIR there), so its failure also
            leaves no output.
        quantize: None, "w8a16" or "w8a8": int8 Linear weights (`quantized_plan`), the Linears and
            the arithmetic of `export --quantize` (`ascend_adapt.quant.weights`, the W8A8 plan of
            `ascend_adapt.quant.smoothquant.plan_w8a8`).
        group_size: w8a16: one scale per `group_size` input channels (None = per output channel).
        calib, smooth_alpha, keep_fp16: w8a8: calibration set ("builtin" or a file), SmoothQuant α,
            keep-fp16 rule (as `export` / `convert`).
        w8a8_plan: a `W8A8Plan` of this checkpoint to use instead of calibrating (as
            `build_llm_onnx(w8a8_plan=…)`); not with `calib` / `smooth_alpha` / `keep_fp16`.
        note: callable for progress messages (the W8A8 calibration).

    Returns:
        The output directory.
    """
    quant_opts = (quantize, group_size, calib, smooth_alpha, keep_fp16, w8a8_plan)
    if any(o is not None for o in quant_opts):
        from ascend_adapt.om_convert.builder.quantize import check_quantize_options

        mode = check_quantize_options(quantize, group_size, calib)  # mode-specific options, before any I/O
        if mode != "w8a8" and (smooth_alpha is not None or keep_fp16 is not None):
            raise ConfigError("--smooth-alpha / --keep-fp16 apply to --quantize w8a8",
                              "add --quantize w8a8, or drop them")
        if naming != "ours":
            raise UnsupportedError(f"--quantize writes our canonical names only, not --naming {naming}",
                                   "use --naming ours (what `generate --backend mindspore` loads); MindFormers' "
                                   "quantized checkpoints name the quant cells of MindSpore Golden Stick, which we "
                                   "do not write")
    if naming not in NAMINGS:
        raise ConfigError(f"unknown naming '{naming}'", f"use one of: {', '.join(NAMINGS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format '{fmt}'", f"use one of: {', '.join(FORMATS)}")
    if fmt == "ckpt" and max_shard_bytes:
        raise ConfigError("sharding is only supported for --format safetensors",
                          "MindSpore loads one .ckpt per model (per rank)")
    dtype = normalize_dtype(dtype)
    check_output(out, force, inputs=[src])
    weights = open_weights(src)
    if weights.manifest is not None:
        raise ConfigError(f"{src} is already a MindSpore port ({MANIFEST_NAME})",
                          "to go back to Hugging Face use `ascend-adapt port <dir> --to hf`")
    if naming == "mindformers" and "mindformers" not in weights.adapter.weight_tables:
        raise UnsupportedError(f"{weights.adapter.name}: no MindFormers naming table",
                               f"use --naming ours; tables: {', '.join(weights.adapter.weight_tables)}")
    present = weights.preflight()
    entries, specs = plan_targets(weights, present, naming, dtype)
    quant = None
    if any(o is not None for o in quant_opts):
        quant = quantized_plan(weights, present, specs, quantize, group_size=group_size, calib=calib,
                               smooth_alpha=smooth_alpha, keep_fp16=keep_fp16, w8a8_plan=w8a8_plan, note=note)
        specs = quant.specs
    with atomic_output(out, force=force, is_dir=True, inputs=[src]) as tmp:
        if fmt == "ckpt":
            sink = _CkptSink(tmp / "model.ckpt", specs)
        else:
            sink = _SafetensorsSink(tmp, specs, max_shard_bytes, {"format": "ms"})
        bar = _Progress(_nbytes(specs), f"port → mindspore ({fmt}{', ' + quant.mode if quant else ''})", progress)
        if quant is None:
            tensors = _stream_into(sink, weights, entries, dtype, bar)
        else:
            tensors = _stream_quantized(sink, weights, quant, bar)
        copied = []
        for f in side_files(weights.path):
            shutil.copy2(f, tmp / f.name)
            copied.append(f.name)
        manifest = {
            "format_version": MANIFEST_VERSION,
            "tool": f"ascend-adapt {__version__}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "direction": "hf->mindspore",
            "arch": weights.spec.arch,
            "naming": naming,
            "format": fmt,
            "dtype": dtype or "source",
            "weights_files": sink.files,
            "config_file": "config.json" if (weights.path / "config.json").is_file() else "params.json",
            "spec": weights.spec.to_dict(),
            "source": _source_record(weights),
            "copied_files": copied,
            "tensors": tensors,
        }
        if quant is not None:
            manifest["quantization"] = quant.record()
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if after is not None:
            after(tmp)
    return Path(out)


def port_to_hf(src, out, *, force: bool = False, progress: bool = True, verify: bool = True,
               max_shard_bytes: int | None = HF_SHARD_BYTES) -> Path:
    """Convert a port output back into an HF checkpoint directory (HF names, safetensors).

    Args:
        src: a directory written by `port_to_mindspore`.
        out: the output directory (atomic).
        force: replace an existing `out`.
        progress: show a tqdm bar.
        verify: check each tensor's CRC32 against the manifest.
        max_shard_bytes: largest safetensors shard (HF's default 5 GiB); None = one file.

    Returns:
        The output directory.
    """
    check_output(out, force, inputs=[src])
    weights = open_weights(src)
    m = weights.manifest
    if m is None:
        raise ConfigError(f"{src} is not a MindSpore port output (no {MANIFEST_NAME})",
                          "pass a directory written by `ascend-adapt port <hf-dir> --to mindspore`")
    if m.get("quantization"):
        raise UnsupportedError(f"{src}: the port holds int8 weights (--quantize {m['quantization'].get('mode')}); "
                               "a Hugging Face checkpoint from it would not be the model's weights",
                               "port the original Hugging Face checkpoint instead (without --quantize) if you need "
                               "HF weights")
    if m.get("config_file") != "config.json" or not (weights.path / "config.json").is_file():
        raise UnsupportedError(f"{src}: has no config.json (the port was made from Meta's consolidated layout)",
                               "convert the Meta checkpoint to HF with transformers' convert_llama_weights_to_hf "
                               "first, then port that")
    present = weights.preflight()
    entries, specs = plan_targets(weights, present, "hf", None)
    with atomic_output(out, force=force, is_dir=True, inputs=[src]) as tmp:
        sink = _SafetensorsSink(tmp, specs, max_shard_bytes, {"format": "pt"})
        bar = _Progress(_nbytes(specs), "port → hf (safetensors)", progress)
        _stream_into(sink, weights, entries, None, bar, verify=verify)
        for f in side_files(weights.path, exclude=[MANIFEST_NAME]):
            shutil.copy2(f, tmp / f.name)
        dtypes = {d for _, _, d in specs if d in ("float16", "float32", "bfloat16")}
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if len(dtypes) == 1 and cfg.get("torch_dtype", next(iter(dtypes))) != next(iter(dtypes)):
            cfg["torch_dtype"] = next(iter(dtypes))  # the port cast the weights (--dtype)
            cfg_path.write_text(json.dumps(cfg, indent=2))
    return Path(out)


def convert(src, out, *, to: str, **options) -> Path:
    """`port_to_mindspore` (to="mindspore") or `port_to_hf` (to="hf")."""
    if to == "mindspore":
        return port_to_mindspore(src, out, **options)
    if to == "hf":
        return port_to_hf(src, out, **options)
    raise ConfigError(f"unknown target '{to}'", "use --to mindspore or --to hf")


__all__ = ["port_to_mindspore", "port_to_hf", "convert", "regroup", "side_files", "normalize_dtype",
           "quantized_plan", "QuantizedPort"]
