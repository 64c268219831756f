"""Traced ONNX export for Hugging Face models without a graph builder (encoders, small decoders).

LLMs with an adapter are built directly from their spec (see DESIGN.md); this is the fallback:
`torch.onnx.export(..., dynamo=False)` with **static shapes** (batch × seq_len, no dynamic axes,
no KV cache), at opset 17 by default (the legacy exporter goes below 18, the dynamo one cannot),
then the rewrite rules for the target (`ascend_adapt.operators.rewrites.apply_rules`).

    >>> from ascend_adapt.om_convert.traced_export import export_traced
    >>> res = export_traced(model, "bert.onnx", seq_len=128, target="Ascend310P3")  # doctest: +SKIP
    >>> res.rewrite.fired, res.input_dtypes                                         # doctest: +SKIP

Inputs are `input_ids` and `attention_mask` (all ones in the example); passing the mask also keeps
transformers off its packed-sequence detection (`torch.diff`, which the exporter cannot export).
The output is `logits` for models that return logits, else `last_hidden_state`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ascend_adapt.errors import ConfigError
from ascend_adapt.fsutil import atomic_output

_PROTO_LIMIT_BYTES = 1_800_000_000  # stay below protobuf's 2 GiB with margin


@dataclass
class TracedExport:
    """What `export_traced` wrote.

    Attributes:
        path: the .onnx file (weights beside it in `<name>.data` when over ~1.8 GB).
        opset: ONNX opset of the written model.
        input_names / output_names: graph inputs and outputs.
        input_dtypes: numpy dtype name per input after the rules ("int32" when int64_to_int32 fired).
        example_inputs: the inputs used for tracing, cast to `input_dtypes` ([batch, seq_len]).
        torch_output: the model's output on `example_inputs` in fp32 torch (the golden).
        rewrite: the RewriteReport of the rules (None when rules were off).
    """

    path: Path
    opset: int
    input_names: list[str]
    output_names: list[str]
    input_dtypes: dict[str, str]
    example_inputs: dict[str, np.ndarray]
    torch_output: np.ndarray
    rewrite: Any = None
    notes: list[str] = field(default_factory=list)


def _load_hf(path: str | os.PathLike, model_kwargs: dict | None):
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(cfg, "architectures", None) or []
    kw = {"torch_dtype": "float32", **(model_kwargs or {})}
    if any(a.endswith("ForCausalLM") for a in archs):
        return transformers.AutoModelForCausalLM.from_pretrained(path, **kw)
    return transformers.AutoModel.from_pretrained(path, **kw)


def _wrapper(model):
    import torch

    params = inspect.signature(model.forward).parameters
    extra = {"use_cache": False} if "use_cache" in params else {}
    if "return_dict" in params:
        extra["return_dict"] = True

    class _Traced(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, **extra)
            for name in ("logits", "last_hidden_state"):
                val = getattr(out, name, None)
                if val is not None:
                    return val
            return out[0]

    return _Traced(model)


def export_traced(hf_model_or_dir, out_path: str | os.PathLike, opset: int = 17, seq_len: int = 16,
                  batch: int = 1, *, target=None, cann_version: str | None = None,
                  rules: Sequence[str] | bool | None = None, force: bool = False, seed: int = 0,
                  model_kwargs: dict | None = None) -> TracedExport:
    """Export a Hugging Face model to ONNX by tracing, with static shapes, then apply rewrite rules.

    Args:
        hf_model_or_dir: a transformers model (torch.nn.Module) or a checkpoint directory.
        out_path: the .onnx file to write (atomically).
        opset: ONNX opset for the legacy exporter (<= 18 for ATC; 11-17 is safest).
        seq_len / batch: the static input shape [batch, seq_len].
        target: Target or name for the rules (None: only the "always" rules run).
        cann_version: toolchain version for the rules (default: the target's default).
        rules: None = automatic rule selection, a list = those rules, False = no rules.
        force: overwrite an existing `out_path`.
        seed: seed for the example input ids.
        model_kwargs: extra `from_pretrained` kwargs when a directory is given
            (e.g. {"attn_implementation": "eager"}).

    Returns:
        TracedExport with the path, dtypes, example inputs, torch golden output and rule report.
    """
    import onnx
    import torch

    from ascend_adapt.operators.rewrites import apply_rules

    if not 7 <= opset <= 18:
        raise ConfigError(f"opset {opset} is outside 7-18", "ATC parses opsets <= 18; the legacy exporter needs >= 7")
    if seq_len < 1 or batch < 1:
        raise ConfigError(f"static shape [{batch}, {seq_len}] is not valid", "use batch >= 1 and seq_len >= 1")
    model = hf_model_or_dir
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_dir():
            raise ConfigError(f"'{model}' is not a checkpoint directory", "pass a model or an HF checkpoint dir")
        model = _load_hf(model, model_kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"cannot export a {type(model).__name__}", "pass a transformers model or checkpoint dir")
    model = model.eval().float()
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 2) or 2)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen, dtype=torch.int64)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    wrapped = _wrapper(model)
    with torch.no_grad():
        golden = wrapped(ids, mask).float().numpy()
    out_name = "logits" if hasattr(model, "lm_head") or "ForCausalLM" in type(model).__name__ else "last_hidden_state"
    out_path = Path(out_path)
    src_dir = hf_model_or_dir if isinstance(hf_model_or_dir, (str, os.PathLike)) else None
    with atomic_output(out_path, force=force, inputs=[src_dir]) as tmp:
        tmp_dir = tmp.parent / f"{tmp.name}.d"
        tmp_dir.mkdir()
        try:
            traced = tmp_dir / "traced.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, (ids, mask), str(traced), dynamo=False, opset_version=opset,
                                  input_names=["input_ids", "attention_mask"], output_names=[out_name],
                                  do_constant_folding=True)
            m = onnx.load(str(traced))
        finally:
            for p in sorted(tmp_dir.glob("*"), reverse=True):
                p.unlink()
            tmp_dir.rmdir()
        report = None
        if rules is not False:
            m, report = apply_rules(m, target, None if rules in (None, True) else list(rules),
                                    cann_version=cann_version)
        if m.ByteSize() > _PROTO_LIMIT_BYTES:
            onnx.save(m, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f"{out_path.name}.data")
        else:
            onnx.save(m, str(tmp))
    from onnx import helper

    dtypes = {i.name: np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name
              for i in m.graph.input}
    examples = {"input_ids": ids.numpy().astype(dtypes.get("input_ids", "int64")),
                "attention_mask": mask.numpy().astype(dtypes.get("attention_mask", "int64"))}
    ops = {o.domain or "": o.version for o in m.opset_import}
    return TracedExport(out_path, ops.get("", opset), [i.name for i in m.graph.input],
                        [o.name for o in m.graph.output], dtypes, examples, golden, report)
