"""The "mindspore" backend: a checkpoint on MindSpore (CPU here, Ascend there) over a static KV cache.

`get_backend("mindspore", path, dtype="float32", mode="graph")` accepts an HF / Meta checkpoint
directory or a `ascend-adapt port --to mindspore` output (ckpt or safetensors, either naming);
weights stream into the family's `ms_model.build(spec, dtype)` one tensor at a time.

A session owns its cache: per layer K and V `Parameter`s [max_len, B, kv_heads, D], updated in
place with `ops.scatter_nd_update` on the leading (slot) axis, the fastest update that compiles
(../shared/reference/python_environment.md). In graph mode a step cell is `ms.jit`-compiled once
per input shape: decode steps share one graph; prefill lengths are padded up to a bucket (powers
of two from 16, within the cache) so prompts of different lengths share graphs. The padded
tokens go to cache slots that the next decode steps overwrite before anything can see them.

No mindspore import at module level: importing this module
and stays cheap.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ascend_adapt.errors import CheckpointError, ConfigError, ShapeMismatchError, UnsupportedError
from ascend_adapt.runtime.lm_inputs import StepInputs, prefill_inputs
from ascend_adapt.runtime.session import StaticCacheSession

DTYPES = ("float32", "float16")
MODES = ("graph", "pynative")
_NP = {"float32": np.float32, "float16": np.float16}


def build_model(spec, dtype: str = "float32", num_positions: int | None = None):
    """The family's MindSpore cell (`model_zoo/<arch>/ms_model.py`), parameters not yet loaded."""
    name = f"ascend_adapt.model_zoo.{spec.arch}.ms_model"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise UnsupportedError(f"architecture '{spec.arch}' has no MindSpore model ({name})",
                               "add model_zoo/<arch>/ms_model.py with build(spec, dtype)") from None
    return module.build(spec, dtype, num_positions)


def load_canonical(model, stream, spec) -> None:
    """Set the cell's parameters from a canonical (name, array) stream, one tensor at a time.

    With a tied spec, the embedding and the head both take `spec.tied_source` (the other tensor
    only when the source is absent), as the torch references do.
    """
    import mindspore as ms
    from mindspore import Tensor

    params = dict(model.parameters_and_names())
    np_dtype = _np_dtype(model)
    tied, src = spec.tie_word_embeddings, spec.tied_source
    pair = ("embed.weight", "lm_head.weight")
    seen, fallback = set(), None

    def put(name, arr):
        p = params.get(name)
        if p is None:
            raise CheckpointError(f"MindSpore model: canonical tensor '{name}' has no parameter",
                                  "the checkpoint does not belong to this architecture")
        if tuple(arr.shape) != tuple(p.shape):
            raise ShapeMismatchError(name, p.shape, arr.shape)
        # float weights take the compute dtype; int8 weights and float32 quant scales keep the parameter's
        want = np_dtype if p.dtype == model.compute_dtype else {ms.int8: np.int8, ms.float32: np.float32}[p.dtype]
        p.set_data(Tensor(np.ascontiguousarray(arr.astype(want, copy=False))))
        seen.add(name)

    for name, arr in stream:
        if tied and name in pair:
            if name != src:
                fallback = arr
                continue
            for n in pair:
                put(n, arr)
            continue
        put(name, arr)
    if tied and pair[0] not in seen and fallback is not None:
        for n in pair:
            put(n, fallback)
    missing = sorted(set(params) - seen)
    if missing:
        hint = ("config.json says tie_word_embeddings=false but the checkpoint has no lm_head.weight"
                if missing == ["lm_head.weight"] else "the checkpoint is incomplete; check its shards")
        raise CheckpointError(f"MindSpore model: {len(missing)} parameters were not in the checkpoint, "
                              f"e.g. '{missing[0]}'", hint)


def _np_dtype(model):
    import mindspore as ms

    return np.float16 if model.compute_dtype == ms.float16 else np.float32


def _step_cell_classes():
    """CachedStep (PyNative) and its graph-mode twin; defined lazily (mindspore import)."""
    import mindspore as ms
    from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

    class CachedStep(nn.Cell):
        """One LM step over a session's cache Parameters.

        construct(input_ids [B, S] int32, positions [B, S] | [B, 2, S] int32, slots [S, 1] int32,
        mask [B, S, M+S] bool) → float32 logits [B, S, V]; this step's K/V are written into the
        cache at `slots`.
        """

        def __init__(self, model, batch: int, max_len: int):
            super().__init__()
            self.model = model
            spec = model.spec
            shape = (max_len, batch, spec.num_kv_heads, spec.head_dim)
            zeros = np.zeros(shape, dtype=_np_dtype(model))
            self.k_cache = ParameterTuple([Parameter(Tensor(zeros), name=f"cache.k.{i}", requires_grad=False)
                                           for i in range(spec.num_layers)])
            self.v_cache = ParameterTuple([Parameter(Tensor(zeros), name=f"cache.v.{i}", requires_grad=False)
                                           for i in range(spec.num_layers)])

        def construct(self, input_ids, positions, slots, mask):
            logits, ks, vs = self.model(input_ids, positions, mask, self.k_cache, self.v_cache)
            writes = ()
            for i in range(len(ks)):
                writes += (ops.scatter_nd_update(self.k_cache[i], slots, ops.transpose(ks[i], (2, 0, 1, 3))),
                           ops.scatter_nd_update(self.v_cache[i], slots, ops.transpose(vs[i], (2, 0, 1, 3))))
            return ops.depend(ops.cast(logits, ms.float32), writes)

    class CachedStepGraph(CachedStep):
        @ms.jit
        def construct(self, input_ids, positions, slots, mask):
            return super().construct(input_ids, positions, slots, mask)

    return CachedStep, CachedStepGraph


def step_mask(inputs: StepInputs) -> np.ndarray:
    """[B, S, M+S] bool: cache slots written by earlier steps, then this step's own tokens."""
    past, new = inputs.split_visible()
    return np.concatenate([past, new], axis=-1)


def prefill_bucket(seq_len: int, room: int, smallest: int = 16) -> int:
    """Padded prefill length: the next power of two ≥ seq_len (at least `smallest`), ≤ room."""
    b = smallest
    while b < seq_len:
        b *= 2
    return max(seq_len, min(b, room))


def pad_step(inputs: StepInputs, length: int, pad_id: int = 0) -> StepInputs:
    """Pad a step to `length` tokens at the end: padded queries see only themselves, nothing sees them."""
    B, S = inputs.input_ids.shape
    extra = length - S
    if extra <= 0:
        return inputs
    ids = np.concatenate([inputs.input_ids, np.full((B, extra), pad_id, np.int64)], axis=1)
    pos = np.concatenate([inputs.positions, np.zeros(inputs.positions.shape[:-1] + (extra,), np.int64)], axis=-1)
    M = inputs.visible.shape[-1]
    vis = np.zeros((B, length, M), bool)
    vis[:, :S] = inputs.visible
    s0 = inputs.start_slot
    rows = np.arange(S, length)
    vis[:, rows, s0 + rows] = True
    return StepInputs(ids, pos, s0, vis)


class MindSporeSession(StaticCacheSession):
    """A batch in flight on MindSpore, over a static cache of `max_len` slots."""

    def __init__(self, backend: "MindSporeBackend", batch: int, max_len: int):
        super().__init__(backend.spec, batch, max_len)
        if max_len > backend.num_positions:
            raise ConfigError(f"max_len {max_len} exceeds the rotary table ({backend.num_positions} positions)",
                              "lower --max-len, or build the backend with num_positions=…")
        self.backend = backend
        self.graph = backend.mode == "graph"
        self.cell = backend._acquire_cell(batch, max_len)
        self.pad_id = int(backend.spec.pad_token_id or 0)

    def close(self) -> None:
        """Give the step cell (and its compiled graphs) back to the backend for the next session."""
        cell, self.cell = getattr(self, "cell", None), None
        if cell is not None:
            self.backend._release_cell(self.batch, self.max_len, cell)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def step(self, inputs: StepInputs) -> np.ndarray:
        from mindspore import Tensor

        S = inputs.seq_len
        if self.graph and S > 1:
            inputs = pad_step(inputs, prefill_bucket(S, self.max_len - inputs.start_slot), self.pad_id)
        n = inputs.seq_len
        slots = (inputs.start_slot + np.arange(n, dtype=np.int32))[:, None]
        logits = self.cell(Tensor(inputs.input_ids.astype(np.int32)), Tensor(inputs.positions.astype(np.int32)),
                           Tensor(slots), Tensor(step_mask(inputs)))
        return logits.asnumpy()[:, :S]


class MindSporeBackend:
    """A checkpoint on MindSpore.

    Args:
        path: HF / Meta checkpoint directory, or a `port --to mindspore` output directory.
        dtype: compute dtype, "float32" or "float16" (norms and softmax stay fp32).
        mode: "graph" (`ms.jit` step cells, compiled once per shape) or "pynative".
        num_positions: rotary table rows (default: the config's maximum length).
        device: MindSpore device target ("CPU", "Ascend"); default: MindSpore's default.

    Attributes:
        name: "mindspore".
        spec: the `ModelSpec`.
        model: the MindSpore cell (`model_zoo/<arch>/ms_model.py`).
    """

    name = "mindspore"

    def __init__(self, path, dtype: str = "float32", mode: str = "graph", num_positions: int | None = None,
                 device: str | None = None):
        from ascend_adapt._optional import require

        require("mindspore", purpose="the MindSpore backend")
        from ascend_adapt.port.artifact import open_weights

        from ascend_adapt.model_zoo.ms_layers import configure_cpu

        if dtype not in DTYPES:
            raise ConfigError(f"mindspore backend: unknown dtype '{dtype}'", f"use one of: {', '.join(DTYPES)}")
        if mode not in MODES:
            raise ConfigError(f"mindspore backend: unknown mode '{mode}'", f"use one of: {', '.join(MODES)}")
        configure_cpu(mode, device=device)
        self.path = Path(path)
        self.dtype, self.mode = dtype, mode
        weights = open_weights(self.path)
        self.spec = weights.spec
        self.num_positions = num_positions or self.spec.max_position + 1
        self.model = build_model(self.spec, dtype, self.num_positions)
        quantization = (weights.manifest or {}).get("quantization")
        if quantization:  # `port --quantize`: int8 Linears (model_zoo/ms_layers.py QuantLinear)
            from ascend_adapt.model_zoo.ms_layers import quantize_model

            quantize_model(self.model, quantization, weights.reader.get)
        load_canonical(self.model, weights.iter_canonical(), self.spec)
        self._free_cells: dict[tuple, list] = {}

    @classmethod
    def from_canonical(cls, spec, canonical, dtype: str = "float32", mode: str = "graph",
                       num_positions: int | None = None) -> "MindSporeBackend":
        """A backend from a spec and in-memory canonical weights (dict or (name, array) pairs)."""
        from ascend_adapt.model_zoo.ms_layers import configure_cpu

        configure_cpu(mode)
        self = cls.__new__(cls)
        self.path, self.dtype, self.mode, self.spec = None, dtype, mode, spec
        self.num_positions = num_positions or spec.max_position + 1
        self.model = build_model(spec, dtype, self.num_positions)
        load_canonical(self.model, canonical.items() if hasattr(canonical, "items") else canonical, spec)
        self._free_cells = {}
        return self

    def new_session(self, batch: int, max_len: int) -> MindSporeSession:
        """An `LMSession` for `batch` rows over a cache of `max_len` slots.

        Step cells (cache Parameters + compiled graphs) are pooled per (batch, max_len): a session
        that is closed or garbage-collected hands its cell to the next session of that shape, so
        graphs compile once per shape, not once per session. Stale cache contents are harmless:
        a slot becomes visible only in the step that writes it.
        """
        return MindSporeSession(self, batch, max_len)

    def _acquire_cell(self, batch: int, max_len: int):
        pool = self._free_cells.setdefault((batch, max_len), [])
        if pool:
            return pool.pop()
        plain, graph = _step_cell_classes()
        return (graph if self.mode == "graph" else plain)(self.model, batch, max_len)

    def _release_cell(self, batch: int, max_len: int, cell) -> None:
        self._free_cells.setdefault((batch, max_len), []).append(cell)

    def _full_inputs(self, input_ids, attention_mask):
        from mindspore import Tensor

        ids = np.asarray(input_ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        step, _ = prefill_inputs(self.spec, ids, attention_mask, ids.shape[1])
        B, S = ids.shape
        mask = np.concatenate([np.zeros((B, S, 1), bool), step.visible], axis=-1)  # one empty cache slot
        cache = Tensor(np.zeros((1, B, self.spec.num_kv_heads, self.spec.head_dim), _NP[self.dtype]))
        caches = [cache] * self.spec.num_layers
        return (Tensor(ids.astype(np.int32)), Tensor(step.positions.astype(np.int32)), Tensor(mask), caches, caches)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        """Full forward without cache over a left-padded batch (PyNative).

        Returns float32 logits [B, S, V], or (logits, {name: float32 array}) with `layer_outputs`:
        "embed", "layers.{i}", "final_norm", "logits" (as the torch backend names them).
        """
        args = self._full_inputs(input_ids, attention_mask)
        if not layer_outputs:
            logits, _, _ = self.model(*args)
            return logits.asnumpy().astype(np.float32)
        outs = {k: v.asnumpy().astype(np.float32) for k, v in self.model.layer_outputs(*args).items()}
        return outs["logits"], outs

    def layer_outputs(self, input_ids, attention_mask=None) -> dict:
        """Per-layer float32 outputs of a full forward (for the compare tool)."""
        return self.full_logits(input_ids, attention_mask, layer_outputs=True)[1]


_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16"}


def mindspore_backend(path, dtype: str = "float32", mode: str = "graph", **options) -> MindSporeBackend:
    """Factory of the "mindspore" backend (ascend_adapt/backends/mindspore/__init__.py).

    Args:
        path: HF / Meta checkpoint or port output directory.
        dtype: "float32" (default) or "float16" (aliases fp32 / fp16).
        mode: "graph" (default) or "pynative".
        **options: `num_positions`, `device` (see `MindSporeBackend`); others are ignored.
    """
    dtype = _DTYPE_ALIASES.get(str(dtype).lower(), dtype)
    return MindSporeBackend(path, dtype=dtype, mode=mode, num_positions=options.get("num_positions"),
                            device=options.get("device"))

