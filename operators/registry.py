"""The custom-operator registry: one `OperatorSpec` per op, keyed by name.

An operator is the unit the LLM graph builder composes layers from. Each one carries:

- `reference(*arrays, **attrs)`: the numpy reference (the numerics we promise, written out);
- `emit(builder, inputs, target=None, **attrs) -> [output names]`: its ONNX emission through a
  `GraphBuilder` (`ascend_adapt.operators.graph`). It emits a fused / custom op where the target
  has one (e.g. `LayerNormalization` at opset 17-18 on CANN >= 7), else a decomposition into
  primitives the target's ATC op table accepts;
- `mindspore(*tensors, **attrs)`: the MindSpore implementation, for ops the MindSpore models use
  (optional; MindSpore is imported inside the call, never here);
- `sim_kernel` / `sim_cost`: hooks the Ascend CPU simulator fills in (None until it does):

  - `sim_kernel(inputs: list[np.ndarray], **attrs) -> list[np.ndarray]` executes the op as the
    card would (dtype of each stage, fp16 overflow) when a graph carries it as one fused node;
  - `sim_cost(node_shapes) -> (flops, bytes)` with `node_shapes` a mapping
    `{"inputs": [(shape, dtype), …], "outputs": [(shape, dtype), …], "attrs": {…}}`; the
    simulator turns (flops, bytes) into a latency with the target profile.

Every node an emission creates carries the node metadata `ascend_adapt.op = <operator name>`, so
a tool can group a graph's primitives back into operators (costs, layer-wise compare).

Adding an operator: docs/operators.md.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, ClassVar, Sequence

from ascend_adapt.errors import UnsupportedError
from ascend_adapt.registry import Registry

# the built-in operator modules, imported on the first registry lookup
BUILTIN_OPERATOR_MODULES = (
    "rms_norm", "layer_norm", "rotary", "swiglu", "gelu_tanh", "glm_residual", "attention", "quant",
)


def _load_builtin_operators() -> None:
    for mod in BUILTIN_OPERATOR_MODULES:
        importlib.import_module(f"ascend_adapt.operators.{mod}")


OPERATORS: Registry["OperatorSpec"] = Registry("operator", loader=_load_builtin_operators)


class OperatorSpec:
    """Base class of an operator. Subclass, set `name`, implement `reference` and `_emit`.

    Class attributes:
        name: registry key ("rms_norm").
        doc: one-paragraph description (defaults to the class docstring).
        fp32_island: the emission computes in fp32 whatever the activation dtype (Cast up,
            compute, Cast down); its compute nodes are recorded as ATC `--keep_dtype` candidates.
        fused_op: the ONNX op type of the fused form, if the op has one ("LayerNormalization").

    Instance attributes (filled by the simulator, None here):
        sim_kernel: `(inputs: list[np.ndarray], **attrs) -> list[np.ndarray]`.
        sim_cost: `(node_shapes) -> (flops, bytes)`.
    """

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    fp32_island: ClassVar[bool] = False
    fused_op: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.sim_kernel: Callable | None = None
        self.sim_cost: Callable | None = None

    # ---- the three implementations ---------------------------------------------------------
    def reference(self, *inputs, **attrs) -> Any:  # pragma: no cover - abstract
        """numpy reference: arrays in, array (or tuple of arrays) out."""
        raise NotImplementedError

    def emit(self, builder, inputs: Sequence[str], target=None, **attrs) -> list[str]:
        """Emit the op into `builder`'s graph; returns the output tensor names.

        Args:
            builder: an `ascend_adapt.operators.graph.GraphBuilder` (its current scope names the
                nodes, its `act_dtype` is the activation dtype, its `opset` the graph's opset).
            inputs: input tensor names, in the order `reference` takes its arrays.
            target: an `ascend_adapt.targets.Target` (or None: any ONNX runtime). Decides between
                the fused form and the decomposition.
            **attrs: the op's attributes (as `reference` takes them).
        """
        with builder.op_tag(self.name):
            out = self._emit(builder, list(inputs), target, **attrs)
        return [out] if isinstance(out, str) else list(out)

    def _emit(self, builder, inputs: list[str], target, **attrs):  # pragma: no cover - abstract
        raise NotImplementedError

    def mindspore(self, *inputs, **attrs):
        """MindSpore implementation (mindspore Tensors in and out)."""
        raise UnsupportedError(f"operator '{self.name}' has no MindSpore implementation",
                               "use the numpy reference, or add `mindspore()` to the operator")

    # ---- helpers -----------------------------------------------------------------------------
    def fused_available(self, builder, target) -> bool:
        """Whether `fused_op` can be emitted: the graph's opset has it and the target parses it.

        Without a target only the ONNX opset decides (see each op's notes for its opset range).
        """
        return self.fused_op is not None and fused_op_supported(self.fused_op, builder.opset, target)

    def __repr__(self) -> str:
        return f"<operator {self.name}>"


# opset ranges at which a fused op exists in the ONNX standard
_FUSED_OPSETS = {"LayerNormalization": (17, 99)}


def fused_op_supported(op_type: str, opset: int, target=None) -> bool:
    """True when `op_type` exists at `opset` and `target` (if given) accepts it there.

    For Ascend targets this means ATC's parser is registered for the op at that opset (for
    `LayerNormalization`: opsets 17-18, which only CANN >= 7 accepts; the target's opset range for
    its default CANN version decides).
    """
    lo, hi = _FUSED_OPSETS.get(op_type, (1, 99))
    if not lo <= opset <= hi:
        return False
    if target is None:
        return True
    try:
        return bool(target.op_support(op_type, opset))
    except Exception:  # noqa: BLE001 - an unparseable target answer means "do not risk it"
        return False


def register_operator(cls: type[OperatorSpec]) -> type[OperatorSpec]:
    """Class decorator: instantiate `cls` and register it under `cls.name` (duplicates raise)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not cls.doc:
        cls.doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    existing = OPERATORS._items.get(cls.name)
    if existing is not None and (type(existing).__module__, type(existing).__qualname__) == (
            cls.__module__, cls.__qualname__):
        return cls  # the same module imported again (importlib.reload): keep the first instance
    OPERATORS.register(cls.name, cls())
    return cls


def get_operator(name: str) -> OperatorSpec:
    """The registered operator `name` (an unknown name lists the known ones)."""
    return OPERATORS.get(name)
