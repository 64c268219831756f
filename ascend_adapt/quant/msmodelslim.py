"""Export a W8A8 (SmoothQuant) model in msModelSlim's format, for vLLM-Ascend's `ascend`
quantization (and MindIE).

The contract, as its readers define it:

- vLLM-Ascend v0.23.0, `vllm_ascend/quantization/modelslim_config.py`: the description file is
  `quant_model_description.json` (`MODELSLIM_CONFIG_FILENAME`), a flat JSON object
  `{"<HF weight name>": "<quant type>"}`; a Linear is quantized by the scheme its
  `"<prefix>.weight"` names ("W8A8" = static W8A8) and skipped (fp16) when that value is
  "FLOAT"; the shards of a fused vLLM layer (q/k/v → qkv_proj, gate/up → gate_up_proj) must all
  carry the same type.
- vLLM-Ascend v0.23.0, `vllm_ascend/_310p/quantization/methods/w8a8_static.py` (310P; the generic
  `vllm_ascend/quantization/methods/w8a8_static.py` declares the same) — the parameters of a
  "W8A8" Linear [n out, k in] in an fp16 model: `weight` int8 [n, k]; `input_scale` [1] and
  `input_offset` [1] (activation x → round(x / input_scale + input_offset), `npu_quantize`);
  `quant_bias` int32 [n] and `deq_scale` int64 [n] (output = (x_q · weight_qᵀ + quant_bias) ·
  deq_scale, `npu_quant_matmul`); `weight_scale`, `weight_offset` [n, 1] in the model dtype.
  `vllm_ascend/xlite/xlite.py` (`_transform_deq_scale`): an int64 deq_scale holds the float32
  bit pattern in its low 32 bits, upper 32 bits zero.
- msModelSlim `docs/zh/.../ascendv1.md` (AscendV1 format, "version" "1.0.0"): global keys
  `model_quant_type` (the highest type present: "W8A8") and `version`; every tensor of the
  weights file has an entry; `deq_scale = input_scale · weight_scale`,
  `quant_bias = round(bias / deq_scale − Σ_k weight_q · input_offset)`; a Linear's float bias
  stays in the file marked "FLOAT"; the weights file is `quant_model_weights.safetensors`.

What we write (symmetric activations, so `input_offset` = 0 and `quant_bias = round(bias /
deq_scale)`): every HF tensor of the source under its HF name (fused ChatGLM2/3 tensors fused
as in the checkpoint: q/k/v share one smoothing vector and one activation scale, so quantizing
the fused matrix row by row gives the rows of the separate ones); non-quantized tensors in fp16;
`config.json` (its `quantization_config` removed) and the tokenizer files of the source.

Smoothing folds into the weights, since these engines have no per-channel Mul before a quantized
Linear: q/k/v and gate/up divide their norm's weight (the plan's `fold`); down_proj's vector
divides up_proj's output rows (SwiGLU: down reads silu(gate)·up, so row j of up scales input
channel j of down exactly); o_proj's divides v_proj's rows when every query head has its own KV
head (MHA). Where no exact fold exists (o_proj under GQA/MQA, ChatGLM-6B's α-residual) the export
uses s = 1 for that Linear, with its activation scale recomputed from the raw statistic
(`max amax / 127`), and says so in `export_notes`.

Streaming: one source tensor at a time (read, smooth, quantize, write), so the peak is one
tensor plus the plan, not the model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ascend_adapt.errors import UnsupportedError

DESCRIPTION = "quant_model_description.json"
WEIGHTS = "quant_model_weights.safetensors"
FORMAT_VERSION = "1.0.0"
QUANT_SUFFIXES = ("weight", "input_scale", "input_offset", "quant_bias", "deq_scale", "weight_scale",
                  "weight_offset")


def pack_deq_scale(scale) -> np.ndarray:
    """float32 scales → int64 whose low 32 bits are the float32 bits (upper bits zero)."""
    bits = np.ascontiguousarray(np.asarray(scale, np.float32)).view(np.uint32)
    return bits.astype(np.int64)


def unpack_deq_scale(packed) -> np.ndarray:
    """The inverse of `pack_deq_scale`."""
    return (np.asarray(packed, np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


@dataclass
class _Recipe:
    """What the export does to one planned Linear."""

    smooth: np.ndarray      # divides x (folded somewhere), multiplies W's columns
    act_scale: np.float32
    row_fold: str | None    # canonical Linear whose output rows absorb 1/smooth


def export_recipes(plan, spec) -> tuple[dict[str, _Recipe], list[str]]:
    """Per planned Linear, the smoothing the export can fold exactly, and notes on the others."""
    from .smoothquant import act_scale_of

    out, notes = {}, []
    for name, lp in plan.linears.items():
        if lp.fold is not None:
            out[name] = _Recipe(lp.smooth, lp.act_scale, None)
            continue
        suffix = name.split(".", 2)[2] if name.startswith("layers.") else name
        layer = name.split(".")[1] if name.startswith("layers.") else None
        producer = None
        if spec.residual == "prenorm":
            if suffix == "mlp.down" and spec.ffn == "swiglu":
                producer = f"layers.{layer}.mlp.up"
            elif suffix == "attn.o" and spec.num_kv_heads == spec.num_heads:
                producer = f"layers.{layer}.attn.v"
        if producer is not None:
            out[name] = _Recipe(lp.smooth, lp.act_scale, producer)
        else:
            ones = np.ones_like(lp.smooth)
            out[name] = _Recipe(ones, act_scale_of(lp.amax, ones), None)
            notes.append(f"{name}: no exact fold for its smoothing vector in this engine format; "
                         "exported unsmoothed (s = 1, act_scale from the raw statistic)")
    return out, notes


def _transform(canon_name: str, arr: np.ndarray, recipes: dict[str, _Recipe], folds: dict[str, np.ndarray],
               row_folds: dict[str, np.ndarray]) -> np.ndarray:
    """Apply every smoothing that touches one canonical tensor (float32)."""
    a = np.asarray(arr, np.float32)
    base, _, kind = canon_name.rpartition(".")
    if kind == "weight" and base in recipes:
        a = a * recipes[base].smooth[None, :]
    if base + ".weight" in folds:  # a norm's weight or bias
        a = a / folds[base + ".weight"]
    if base in row_folds:  # a producer Linear's rows (weight [out, in] or bias [out])
        s = row_folds[base]
        a = a / (s[:, None] if a.ndim == 2 else s)
    return a


def export_msmodelslim(model_dir, out_dir, plan=None, *, force: bool = False, calib="builtin",
                       alpha: float | str = "auto", rule=None, note=None) -> Path:
    """Write `out_dir` with the W8A8 weights in msModelSlim's format (see the module docstring).

    Args:
        model_dir: HF checkpoint directory or .gguf file.
        out_dir: the directory to create.
        plan: a `W8A8Plan` of this model (else `plan_w8a8(model_dir, calib=…, alpha=…, rule=…)`).
        force: replace an existing `out_dir`.
        note: optional callable(str) told each step.

    Returns:
        `out_dir`.

    Raises:
        UnsupportedError: an architecture the format's engines do not serve (ChatGLM-6B v1).
    """
    from ascend_adapt.checkpoint import open_checkpoint
    from ascend_adapt.checkpoint.gguf_io import resolve_source
    from ascend_adapt.checkpoint.safetensors_io import SafetensorsWriter
    from ascend_adapt.fsutil import atomic_output
    from ascend_adapt.model_zoo.base import adapter_for_config

    from .smoothquant import format_alpha, plan_w8a8
    from .weights import quantize_per_channel

    from ascend_adapt.fsutil import check_output

    say = note or (lambda _s: None)
    check_output(out_dir, force, inputs=[model_dir])  # before the calibration run, not after it
    src = resolve_source(model_dir)
    reader = open_checkpoint(src)
    adapter = adapter_for_config(reader.config, str(Path(src) / "config.json"))
    spec = adapter.spec_from_config(reader.config)
    if not {"vLLM-Ascend", "MindIE"} & set(adapter.serving_engines):  # the engines that load this format
        why, hint = adapter.not_served
        raise UnsupportedError("export --format msmodelslim: " + (why or f"{spec.arch} is not served by vLLM-Ascend "
                                                                  "or MindIE"),
                               hint or "use ascend-adapt convert --quantize w8a8 for the OM route")
    if plan is None:
        say(f"[msmodelslim] calibrating on {calib} (SmoothQuant α={format_alpha(alpha)})")
        plan = plan_w8a8(model_dir, calib=calib, alpha=alpha, rule=rule)
    if plan.arch != spec.arch:
        raise UnsupportedError(f"export --format msmodelslim: the plan is for '{plan.arch}', the model is "
                               f"'{spec.arch}'", "make the plan from this checkpoint")
    recipes, notes = export_recipes(plan, spec)
    folds = {lp.fold: recipes[n].smooth for n, lp in plan.linears.items() if lp.fold is not None}
    row_folds: dict[str, np.ndarray] = {}
    for n, r in recipes.items():
        if r.row_fold is not None:
            row_folds[r.row_fold] = r.smooth

    entries = adapter.entries(spec, "hf")
    shapes = adapter.source_shapes(spec, "hf")
    present = {e.source for e in entries if e.source in reader.infos()}
    specs, desc, plan_of = [], {"model_quant_type": "W8A8", "version": FORMAT_VERSION}, {}
    for e in entries:
        if e.source not in present:
            continue
        parts = [c[: -len(".weight")] for c in e.canonical if c.endswith(".weight")]
        planned = [p for p in parts if p in recipes]
        if planned and len(planned) != len(parts):
            raise UnsupportedError(f"export --format msmodelslim: '{e.source}' fuses "
                                   f"{', '.join(parts)} but only {', '.join(planned)} are quantized",
                                   "keep or quantize the whole input group (the keep rule does this by default)")
        shape = shapes[e.source]
        if planned and e.source.endswith(".weight"):
            scales = {float(recipes[p].act_scale) for p in planned}
            if len(scales) != 1:
                raise UnsupportedError(f"export --format msmodelslim: '{e.source}' fuses Linears with "
                                       "different activation scales", "q/k/v and gate/up must share one input")
            prefix = e.source[: -len(".weight")]
            n_out = shape[0]
            specs += [(e.source, shape, "int8"), (prefix + ".input_scale", (1,), "float32"),
                      (prefix + ".input_offset", (1,), "float32"), (prefix + ".quant_bias", (n_out,), "int32"),
                      (prefix + ".deq_scale", (n_out,), "int64"), (prefix + ".weight_scale", (n_out, 1), "float16"),
                      (prefix + ".weight_offset", (n_out, 1), "float16")]
            for s in QUANT_SUFFIXES:
                desc[f"{prefix}.{s}"] = "W8A8"
            plan_of[e.source] = (prefix, scales.pop())
        else:
            specs.append((e.source, shape, "float16"))
            desc[e.source] = "FLOAT"
    biases = {e.source[: -len(".bias")]: e for e in entries if e.source.endswith(".bias")}

    with atomic_output(out_dir, force=force, is_dir=True, inputs=[model_dir, src]) as tmp:
        say(f"[msmodelslim] writing {len(plan_of)} W8A8 tensors and {len(specs) - 7 * len(plan_of)} "
            f"float tensors to {out_dir}")
        with SafetensorsWriter(tmp / WEIGHTS, specs, metadata={"format": "pt"}) as w:
            for e in entries:
                if e.source not in present:
                    continue
                arrays = adapter.split(e, reader.get(e.source), spec)
                merged = adapter.merge(e, [_transform(c, a, recipes, folds, row_folds)
                                           for c, a in zip(e.canonical, arrays)], spec)
                if e.source not in plan_of:
                    w.write(e.source, np.asarray(merged, np.float32).astype(np.float16))
                    continue
                prefix, act = plan_of[e.source]
                q, wscale = quantize_per_channel(merged)
                deq = (np.float32(act) * wscale).astype(np.float32)
                bias_entry = biases.get(prefix)
                if bias_entry is not None and bias_entry.source in present:
                    b_parts = adapter.split(bias_entry, reader.get(bias_entry.source), spec)
                    b = adapter.merge(bias_entry, [_transform(c, a, recipes, folds, row_folds)
                                                   for c, a in zip(bias_entry.canonical, b_parts)], spec)
                    qb = np.rint(np.asarray(b, np.float64) / deq).astype(np.int32)
                else:
                    qb = np.zeros(q.shape[0], np.int32)
                w.write(e.source, q)
                w.write(prefix + ".input_scale", np.asarray([act], np.float32))
                w.write(prefix + ".input_offset", np.zeros(1, np.float32))
                w.write(prefix + ".quant_bias", qb)
                w.write(prefix + ".deq_scale", pack_deq_scale(deq))
                w.write(prefix + ".weight_scale", wscale.astype(np.float16)[:, None])
                w.write(prefix + ".weight_offset", np.zeros((q.shape[0], 1), np.float16))
        (tmp / DESCRIPTION).write_text(json.dumps(desc, indent=2) + "\n", encoding="utf-8")
        cfg = dict(reader.config)
        cfg.pop("quantization_config", None)
        cfg["torch_dtype"] = "float16"
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for f in Path(src).iterdir():
            if f.is_file() and f.name not in ("config.json",) and not f.name.endswith(
                    (".safetensors", ".bin", ".pt", ".pth", ".gguf")) and not f.name.endswith(".index.json") \
                    and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        report = {"plan": plan.summary(), "export_notes": notes, "source": str(model_dir)}
        (tmp / "ascend_adapt_quant.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
    for line in notes:
        say(f"[msmodelslim] {line}")
    return Path(out_dir)
