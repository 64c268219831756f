"""Record the ATen ops a model reaches, with their input dtypes, under a `TorchDispatchMode`.

The dispatch mode sits below autograd and below PyTorch's CompositeImplicitAutograd
decompositions, so what it sees is what a backend (torch_npu's PrivateUse1 kernels) is asked to
run: `matmul` shows up as `mm` / `bmm`, `softmax` as `_softmax`. Ops with a
CompositeExplicitAutograd kernel (views, `_to_copy`, ...) are seen once, without their inner ops.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from ascend_adapt._optional import require


@dataclasses.dataclass
class OpRecord:
    """One ATen overload as the model called it.

    Attributes:
        op: the qualified overload, "aten::mm" / "aten::add.Tensor".
        key: the overload name the op lists use: "mm", "add.Tensor".
        namespace: "aten" (or a custom library's namespace).
        dtypes: input dtype combinations seen, each a sorted tuple of names ("float16", "int64").
        layouts: tensor layouts seen ("strided", "sparse_coo", ...).
        phases: "prefill" / "decode" (or the labels a caller gave).
        calls: number of calls.
    """

    op: str
    key: str
    namespace: str
    dtypes: set = dataclasses.field(default_factory=set)
    layouts: set = dataclasses.field(default_factory=set)
    phases: set = dataclasses.field(default_factory=set)
    calls: int = 0

    def dtype_names(self) -> list[str]:
        return sorted({d for combo in self.dtypes for d in combo})


@dataclasses.dataclass
class OpTrace:
    """The ops of one run: `ops` by qualified overload, plus what was run."""

    ops: dict
    model: str = ""
    dtype: str = ""
    torch_version: str = ""
    steps: dict = dataclasses.field(default_factory=dict)

    def keys(self) -> set[str]:
        return {r.key for r in self.ops.values()}


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def _make_recorder(trace: OpTrace):
    torch = require("torch", purpose="recording the ops a model runs")
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Recorder(TorchDispatchMode):
        phase = "run"

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            schema = func._schema
            ns, _, name = schema.name.partition("::")
            overload = func._overloadname
            key = name if overload == "default" else f"{name}.{overload}"
            qual = f"{ns}::{key}"
            rec = trace.ops.get(qual)
            if rec is None:
                rec = trace.ops[qual] = OpRecord(qual, key, ns)
            tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            rec.dtypes.add(tuple(sorted({_dtype_name(t.dtype) for t in tensors})))
            rec.layouts.update(str(t.layout).replace("torch.", "") for t in tensors)
            rec.phases.add(self.phase)
            rec.calls += 1
            return func(*args, **kwargs)

    return Recorder()


def record_ops(steps: dict[str, Callable[[], object]], trace: OpTrace | None = None) -> OpTrace:
    """Run each callable of `steps` (label -> fn, in order) under the recorder.

    Args:
        steps: e.g. {"prefill": lambda: ..., "decode": lambda: ...}; called in insertion order.
        trace: add to this trace (default: a new one).

    Returns:
        The trace with every ATen overload reached.
    """
    torch = require("torch", purpose="recording the ops a model runs")
    trace = trace or OpTrace({}, torch_version=torch.__version__)
    rec = _make_recorder(trace)
    with rec, torch.no_grad():
        for label, fn in steps.items():
            rec.phase = label
            fn()
    return trace


def record_model_ops(model_dir: str | Path, dtype: str = "float32", prompt_len: int = 8,
                     new_tokens: int = 2) -> OpTrace:
    """Prefill `prompt_len` tokens and decode `new_tokens` greedy tokens of the model's torch golden
    under the recorder.

    Args:
        model_dir: HF checkpoint directory (any family with an adapter) or a .gguf file.
        dtype: compute dtype of the run: "float32", "float16" or "bfloat16" (record in the dtype
            the device will run, so the dtypes in the report are the deployed ones).
        prompt_len: prompt tokens (ids 10.., modulo the vocabulary; ChatGLM-6B's end in [gMASK] <sop>).
        new_tokens: decode steps (at least 1: the decode graph differs from prefill).

    Returns:
        An `OpTrace` with phases "prefill" and "decode".
    """
    torch = require("torch", purpose="recording the ops a model runs")
    from ascend_adapt.backends.torch.session import TorchBackend

    backend = TorchBackend(model_dir, dtype=dtype)
    spec = backend.spec
    vocab = int(spec.vocab_size)
    body = [int(i) for i in np.arange(10, 10 + prompt_len) % vocab]  # past the special ids
    suffix = list(spec.position_scheme.prompt_suffix(spec))  # ChatGLM-6B: [gMASK] <sop>, as its tokenizer writes them
    if suffix:
        body = body[:max(0, prompt_len - len(suffix))] + suffix
    ids = np.asarray([body], dtype=np.int64)
    session = backend.new_session(1, prompt_len + new_tokens + 1)
    state = {}

    def prefill():
        state["logits"] = session.prefill(ids)

    def decode():
        for _ in range(max(1, new_tokens)):
            tok = np.asarray([int(np.argmax(state["logits"][0]))], dtype=np.int64)
            state["logits"] = session.decode(tok)

    trace = OpTrace({}, model=str(model_dir), dtype=dtype, torch_version=torch.__version__,
                    steps={"prompt_len": prompt_len, "new_tokens": max(1, new_tokens)})
    return record_ops({"prefill": prefill, "decode": decode}, trace)
