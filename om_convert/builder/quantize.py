"""Quantized Linears for the LLM graph builder: W8A16 (weight-only int8) and W8A8 (SmoothQuant).

`LinearQuantizer` is the one place that decides, per canonical Linear weight, how it is stored in
`weights.bin` and how the graph reads it; `build_llm_onnx(quantize=…)` streams every checkpoint
tensor through `store` (one tensor in memory at a time) and asks `emit` for each Linear.

- **w8a16**: every Linear (the 7 per-layer ones and an untied `lm_head`) stored int8 [in, out]
  with a scale per output channel ([out]) or per group of `group_size` input rows
  ([in/G, 1, out]) in the activation dtype (`<weight>_scale`); the graph reads it through the
  `anti_quant` operator (AscendAntiQuant + Mul) and an ordinary MatMul. Embeddings and norms stay
  in the activation dtype; a tied head stays with its embedding.
- **w8a8**: the Linears of a `W8A8Plan` (`ascend_adapt.quant.smoothquant`): W·diag(smooth)
  quantized per output channel and stored int8 [in, out]; the norm a smooth vector folds into is
  divided by it while it streams; in the graph, AMCT's deploy form: [Mul by 1/smooth where not
  folded] → AscendQuant (scale = 1/act_scale) → int8 MatMul → AscendDequant (deq_scale =
  act_scale · w_scale, uint64-encoded, inline). Linears the plan keeps stay float MatMuls.

Both quantize with `ascend_adapt.quant.weights`, the arithmetic every other path uses.
"""

from __future__ import annotations

import numpy as np

from ascend_adapt.errors import ConfigError

QUANT_MODES = ("w8a16", "w8a8")
# canonical Linear weights ([out, in] in the checkpoint)
_LINEAR = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.o.weight",
           "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight")
SCALE_SUFFIX = "_scale"


def check_quantize_options(quantize, group_size=None, calib=None) -> str | None:
    """Validate --quantize / --group-size / --calib together; returns the mode (or None)."""
    if quantize in (None, "", "none", "fp16"):
        if group_size is not None:
            raise ConfigError("--group-size is given without --quantize w8a16",
                              "add --quantize w8a16, or drop --group-size")
        if calib is not None:
            raise ConfigError("--calib is given without --quantize w8a8", "add --quantize w8a8, or drop --calib")
        return None
    q = str(quantize).lower()
    if q not in QUANT_MODES:
        raise ConfigError(f"--quantize '{quantize}' is not a quantization mode",
                          f"use one of: {', '.join(QUANT_MODES)} (or leave it out for fp16 weights)")
    if group_size is not None:
        if q != "w8a16":
            raise ConfigError("--group-size applies to w8a16 only (W8A8 scales are per output channel)",
                              "drop --group-size, or use --quantize w8a16")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ConfigError(f"--group-size {group_size!r} must be a positive integer",
                              "e.g. --group-size 64 or 128 (it must divide every Linear's input size)")
    if calib is not None and q != "w8a8":
        raise ConfigError("--calib applies to w8a8 only (W8A16 needs no calibration)",
                          "drop --calib, or use --quantize w8a8")
    return q


class LinearQuantizer:
    """Storage and emission of quantized Linears for one build.

    Args:
        mode: "w8a16" or "w8a8".
        spec: the model spec.
        act_dtype: the activation (and float weight) dtype.
        group_size: w8a16 group size (None = per output channel).
        plan: the `W8A8Plan` (w8a8).
    """

    def __init__(self, mode: str, spec, act_dtype, *, group_size: int | None = None, plan=None):
        self.mode = check_quantize_options(mode, group_size)
        self.spec = spec
        self.act = np.dtype(act_dtype)
        self.group_size = group_size
        self.plan = plan
        if self.mode == "w8a8":
            if plan is None:
                raise ConfigError("W8A8 needs a plan (calibration statistics)",
                                  "pass --calib builtin or --calib FILE")
            if getattr(plan, "arch", spec.arch) != spec.arch:
                raise ConfigError(f"the W8A8 plan is for '{plan.arch}', the model is '{spec.arch}'",
                                  "plan the model you convert (plan_w8a8 on the same checkpoint)")
            if group_size is not None:
                raise ConfigError("--group-size applies to w8a16 only")
        if self.mode == "w8a16" and group_size:
            from ascend_adapt.quant.weights import check_group_size

            for n, shape in spec.canonical_shapes().items():
                if self._is_linear(n):
                    check_group_size(int(shape[1]), group_size, n)
        self._folds = plan.folds() if (self.mode == "w8a8") else {}
        self.w_scale: dict[str, np.ndarray] = {}   # w8a8: canonical weight → float32 [out]
        self.quantized: list[str] = []
        self.scale_bytes = 0

    # -- which tensors ------------------------------------------------------------------------------
    def _is_linear(self, name: str) -> bool:
        return name.endswith(_LINEAR) or (name == "lm_head.weight" and not self.spec.tie_word_embeddings)

    def quantizes(self, name: str) -> bool:
        """True when canonical weight `name` is stored int8."""
        if not self._is_linear(name):
            return False
        if self.mode == "w8a16":
            return True
        return self.plan.get(name) is not None

    # -- storage (streamed) -------------------------------------------------------------------------
    def store(self, name: str, arr: np.ndarray, wf, stored: dict, stored_array) -> bool:
        """Store canonical tensor `name` if quantization changes it; False → store it as usual.

        Args:
            name, arr: the canonical tensor (checkpoint layout, [out, in] for Linears).
            wf: the `ExternalWeights` being written; stored: name → (location, StoredTensor).
            stored_array: the builder's layout function (name, array) → graph-layout array.
        """
        from ascend_adapt.quant.weights import check_group_size, quantize_groupwise, quantize_per_channel

        if name in self._folds or (name.endswith(".bias") and name[:-5] + ".weight" in self._folds):
            s = self._folds[name if name in self._folds else name[:-5] + ".weight"]
            folded = np.asarray(arr, np.float32) / s
            st = wf.add(name, stored_array(name, folded))
            stored[name] = (wf.location, st)
            return True
        if not self.quantizes(name):
            return False
        w = np.asarray(arr)  # quantized block by block: no whole float32 copy (weights.py)
        if self.mode == "w8a16" and self.group_size:
            check_group_size(w.shape[1], self.group_size, name)
            q, scale = quantize_groupwise(w, self.group_size)
            scale_t = np.ascontiguousarray(scale.T.astype(self.act)).reshape(
                w.shape[1] // self.group_size, 1, w.shape[0])
        else:  # w8a8: W · diag(smooth), taken in float32 inside the quantizer
            q, scale = quantize_per_channel(w, self.plan.get(name).smooth if self.mode == "w8a8" else None)
            scale_t = scale.astype(self.act)
        del w
        st = wf.add(name, np.ascontiguousarray(q.T))
        stored[name] = (wf.location, st)
        if self.mode == "w8a16":
            sst = wf.add(name + SCALE_SUFFIX, scale_t)
            stored[name + SCALE_SUFFIX] = (wf.location, sst)
            self.scale_bytes += scale_t.nbytes
        else:
            self.w_scale[name] = scale
            self.scale_bytes += scale.size * 8  # the uint64 deq_scale in the graph
        self.quantized.append(name)
        return True

    # -- emission -----------------------------------------------------------------------------------
    def emit(self, g, x: str, name: str) -> str:
        """The Linear `x @ W` for canonical weight `name` in graph `g` (an `_LLMGraph`)."""
        from ascend_adapt.operators import get_operator
        from ascend_adapt.operators.quant import encode_deq_scale, quant_scales

        b, target = g.b, g.target
        q = g.w(name)
        if self.mode == "w8a16":
            _, st = g.stored[name]
            w = get_operator("anti_quant").emit(b, [q, g.w(name + SCALE_SUFFIX)], target,
                                                group_size=self.group_size, shape=tuple(st.shape))[0]
            return b.node("MatMul", [x, w])
        lp = self.plan.get(name)
        if lp.fold is None or lp.fold not in self._folds:
            x = b.node("Mul", [x, b.const((1.0 / lp.smooth.astype(np.float64)).astype(self.act))], name="Smooth")
        xq = get_operator("quant").emit(b, [x], target, **quant_scales(float(lp.act_scale)))[0]
        acc = get_operator("int8_matmul").emit(b, [xq, q], target)[0]
        deq = encode_deq_scale(np.float32(lp.act_scale) * self.w_scale[name])
        return get_operator("dequant").emit(b, [acc, b.const(deq)], target)[0]

    # -- the record -----------------------------------------------------------------------------------
    def manifest(self) -> dict:
        """export.json's "quantization" entry."""
        out = {
            "mode": self.mode,
            "weights": "int8, symmetric (scale = max|w| / 127, round half to even, clip ±127)",
            "granularity": (f"per group of {self.group_size} input channels" if self.group_size
                            else "per output channel"),
            "group_size": self.group_size,
            "quantized": list(self.quantized),
            "scale_bytes": int(self.scale_bytes),
            "ops": (["AscendAntiQuant", "Mul", "MatMul"] if self.mode == "w8a16"
                    else ["AscendQuant", "MatMul (int8 → int32)", "AscendDequant"]),
        }
        if self.mode == "w8a8":
            p = self.plan
            out.update({
                **p.alpha_manifest(), "calib": str(p.calib), "calib_prompts": int(p.prompts),
                "calib_tokens": int(p.tokens), "keep_fp16_rule": p.rule.describe(),
                "fp16": {n: list(r) for n, r in p.kept.items()},
                "activations": "static per-tensor int8 (AscendQuant scale = 1/act_scale, offset 0)",
                "folded_into": sorted(self._folds),
            })
        return out

    def summary(self) -> list[str]:
        """Report lines (the keep-fp16 rule for W8A8)."""
        if self.mode == "w8a16":
            return [f"W8A16: {len(self.quantized)} Linears int8 ({self.manifest()['granularity']}), "
                    f"scales {self.scale_bytes / 1e6:.2f} MB"]
        return list(self.plan.summary())


def prepare(model_dir, quantize=None, *, group_size: int | None = None, calib=None, smooth_alpha=None,
            keep_fp16=None, note=None) -> dict:
    """Validate the quantization options of export / convert and plan W8A8 (calibration).

    Args:
        model_dir: the checkpoint.
        quantize: None, "w8a16" or "w8a8".
        group_size: w8a16 group size (None = per output channel).
        calib: w8a8 calibration set: "builtin" (default) or a file path.
        smooth_alpha: w8a8 SmoothQuant migration strength (default "auto": searched per input group).
        keep_fp16: w8a8 keep-fp16 rule (`KeepRule.parse` text / JSON path), None = the default rule.
        note: callable for progress messages (or None).

    Returns:
        keyword arguments for `build_llm_onnx`: {"quantize", "group_size", "w8a8_plan"}.

    Raises:
        ConfigError: an unknown mode, options of another mode, a missing calibration file.
    """
    from pathlib import Path

    mode = check_quantize_options(quantize, group_size, calib)
    if mode != "w8a8":
        if smooth_alpha is not None or keep_fp16 is not None:
            raise ConfigError("--smooth-alpha / --keep-fp16 apply to --quantize w8a8",
                              "add --quantize w8a8, or drop them")
        return {"quantize": mode, "group_size": group_size, "w8a8_plan": None}
    calib = "builtin" if calib is None else str(calib)
    if calib != "builtin" and not Path(calib).is_file():
        raise ConfigError(f"--calib: calibration file '{calib}' does not exist",
                          "pass a text / JSON-lines file of prompts, or --calib builtin for the built-in set")
    from ascend_adapt.quant.smoothquant import check_alpha, format_alpha, plan_w8a8

    alpha = check_alpha("auto" if smooth_alpha is None else smooth_alpha)
    if note:
        note(f"[quantize] W8A8: calibrating on {calib} (SmoothQuant α={format_alpha(alpha)}) with the fp32 torch golden")
    plan = plan_w8a8(model_dir, calib=calib, alpha=alpha, rule=keep_fp16)
    return {"quantize": mode, "group_size": None, "w8a8_plan": plan}
