"""MindIR export: a static-shape prefill graph and a decode graph, and a host runner for them.

The exported graphs are stateless, in the convention of every static graph this project hands
to an NPU toolchain (docs/DESIGN.md): the KV cache is an *input*, the step's new K/V are
*outputs*, the host writes them into its cache and builds the mask:

    inputs   input_ids  [B, S] int32
             positions  [B, S] int32  (ChatGLM-6B: [B, 2, S])
             mask       [B, S, M+S] bool   True = visible (cache slots ⊕ this step's tokens)
             k_cache    [L, M, B, kv_heads, D]  compute dtype (cache before this step)
             v_cache    [L, M, B, kv_heads, D]
    outputs  logits     [B, S, V] float32
             k_new      [L, S, B, kv_heads, D]  this step's post-rotary keys
             v_new      [L, S, B, kv_heads, D]

S = `seq_len` for prefill.mindir (prompts are padded at the end up to it, as the MindSpore
backend pads to a bucket) and 1 for decode.mindir; M = `max_len` cache slots.

`MindIRSession` runs the two graphs through `nn.GraphCell(ms.load(...))` with the shared host
bookkeeping (`StaticCacheSession`), so it can be compared token for token with the eager cell.
Both files embed the weights (each MindIR is self-contained); from a `port --quantize` output
they embed the int8 weights and the quant cells' ops (`model_zoo/ms_layers.py` QuantLinear), and
`mindir.json` records the mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.fsutil import atomic_output
from ascend_adapt.runtime.lm_inputs import StepInputs
from ascend_adapt.runtime.session import StaticCacheSession

MINDIR_MANIFEST = "mindir.json"


def _export_cell_class():
    import mindspore as ms
    from mindspore import nn, ops

    class StepExport(nn.Cell):
        """Stateless step over a cache passed in (see the module docstring)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def construct(self, input_ids, positions, mask, k_cache, v_cache):
            logits, ks, vs = self.model(input_ids, positions, mask, k_cache, v_cache)
            k_new = ops.stack([ops.transpose(k, (2, 0, 1, 3)) for k in ks])
            v_new = ops.stack([ops.transpose(v, (2, 0, 1, 3)) for v in vs])
            return ops.cast(logits, ms.float32), k_new, v_new

    return StepExport


def _dummy_inputs(spec, batch: int, seq: int, max_len: int, np_dtype):
    from mindspore import Tensor

    pos_shape = tuple(spec.position_scheme.shape(batch, seq))
    cache = np.zeros((spec.num_layers, max_len, batch, spec.num_kv_heads, spec.head_dim), np_dtype)
    return (Tensor(np.zeros((batch, seq), np.int32)), Tensor(np.zeros(pos_shape, np.int32)),
            Tensor(np.ones((batch, seq, max_len + seq), bool)), Tensor(cache), Tensor(cache))


def _quant_mode(backend) -> str | None:
    """The mode ("w8a16" / "w8a8") when the backend's weights are a `port --quantize` output, else None."""
    from .artifact import read_manifest

    path = getattr(backend, "path", None)
    m = read_manifest(path) if path is not None and path.is_dir() else None
    return ((m or {}).get("quantization") or {}).get("mode")


def export_mindir(model_dir, out, *, seq_len: int, max_len: int | None = None, batch: int = 1,
                  dtype: str = "float32", force: bool = False, backend=None) -> Path:
    """Export prefill.mindir and decode.mindir for a checkpoint or port output.

    Args:
        model_dir: HF checkpoint or port output directory (ignored when `backend` is given).
        out: output directory (atomic): prefill.mindir, decode.mindir, mindir.json.
        seq_len: prefill length S (prompts are padded up to it).
        max_len: KV-cache slots M (default 2·seq_len).
        batch: B.
        dtype: compute dtype "float32" / "float16".
        backend: an existing `MindSporeBackend` to export (its dtype wins).

    Returns:
        The output directory.
    """
    import mindspore as ms

    from ascend_adapt.backends.mindspore.session import MindSporeBackend

    max_len = max_len or 2 * seq_len
    if seq_len < 1 or max_len < seq_len + 1:
        raise ConfigError(f"MindIR export: seq_len {seq_len} and max_len {max_len} leave no room to decode",
                          "use max_len > seq_len (default 2·seq_len)")
    backend = backend or MindSporeBackend(model_dir, dtype=dtype, mode="pynative")
    spec = backend.spec
    if max_len > backend.num_positions:
        raise ConfigError(f"MindIR export: max_len {max_len} exceeds the model's {backend.num_positions} positions")
    np_dtype = np.float16 if backend.dtype == "float16" else np.float32
    cell = _export_cell_class()(backend.model)
    with atomic_output(out, force=force, is_dir=True, inputs=[model_dir]) as tmp:
        for name, seq in (("prefill", seq_len), ("decode", 1)):
            ms.export(cell, *_dummy_inputs(spec, batch, seq, max_len, np_dtype),
                      file_name=str(tmp / name), file_format="MINDIR")
        (tmp / MINDIR_MANIFEST).write_text(json.dumps({
            "spec": spec.to_dict(), "batch": batch, "seq_len": seq_len, "max_len": max_len,
            "compute_dtype": backend.dtype,
            # a `port --quantize` output: the graphs embed the int8 weights and their quant ops
            "quantization": _quant_mode(backend),
            "inputs": ["input_ids", "positions", "mask", "k_cache", "v_cache"],
            "outputs": ["logits", "k_new", "v_new"],
            "cache_shape": [spec.num_layers, max_len, batch, spec.num_kv_heads, spec.head_dim],
        }, indent=1))
    return Path(out)


class MindIRSession(StaticCacheSession):
    """Generate with exported prefill/decode MindIR graphs; the host owns the cache.

    Args:
        directory: an `export_mindir` output.
    """

    def __init__(self, directory):
        import mindspore as ms
        from mindspore import nn

        from ascend_adapt.model_zoo.ms_layers import configure_cpu
        from ascend_adapt.spec import ModelSpec

        configure_cpu("graph")
        directory = Path(directory)
        meta = json.loads((directory / MINDIR_MANIFEST).read_text())
        super().__init__(ModelSpec.from_dict(meta["spec"]), meta["batch"], meta["max_len"])
        self.seq_len = meta["seq_len"]
        self.np_dtype = np.float16 if meta["compute_dtype"] == "float16" else np.float32
        self.prefill_graph = nn.GraphCell(ms.load(str(directory / "prefill.mindir")))
        self.decode_graph = nn.GraphCell(ms.load(str(directory / "decode.mindir")))
        self.k_cache = np.zeros(meta["cache_shape"], self.np_dtype)
        self.v_cache = np.zeros(meta["cache_shape"], self.np_dtype)

    def step(self, inputs: StepInputs) -> np.ndarray:
        from mindspore import Tensor

        from ascend_adapt.backends.mindspore.session import pad_step, step_mask

        S = inputs.seq_len
        if S > 1:
            if S > self.seq_len:
                raise ConfigError(f"prompt of {S} tokens exceeds the exported prefill length {self.seq_len}",
                                  "re-export with a larger --seq-len")
            inputs = pad_step(inputs, self.seq_len, int(self.spec.pad_token_id or 0))
            graph = self.prefill_graph
        else:
            graph = self.decode_graph
        logits, k_new, v_new = graph(
            Tensor(inputs.input_ids.astype(np.int32)), Tensor(inputs.positions.astype(np.int32)),
            Tensor(step_mask(inputs)), Tensor(self.k_cache), Tensor(self.v_cache))
        s0, n = inputs.start_slot, inputs.seq_len
        n_write = min(n, self.max_len - s0)
        self.k_cache[:, s0:s0 + n_write] = k_new.asnumpy()[:, :n_write]
        self.v_cache[:, s0:s0 + n_write] = v_new.asnumpy()[:, :n_write]
        return logits.asnumpy()[:, :S]
