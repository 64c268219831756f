"""What the torch backend needs from a family whose golden is our own nn.Module (ChatGLM-6B,
ChatGLM2/3): a session over the module's static cache, and full logits of a left-padded batch.

A family's model class provides `spec`, `new_cache(batch, max_len)`, `load_canonical(stream)` and
`forward(input_ids, positions, visible, cache=None, start_slot=0, layer_outputs=None)`; positions
and the visibility mask come from the shared bookkeeping (`ascend_adapt.runtime.lm_inputs`), so
the golden sees exactly what every other backend sees. The family's `torch_model.py` keeps its
math; this module keeps the plumbing that would otherwise be copied into each.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ascend_adapt.spec import ModelSpec
from ascend_adapt.runtime.lm_inputs import StepInputs, prefill_inputs
from ascend_adapt.runtime.session import StaticCacheSession


def forward_full(model, input_ids, attention_mask=None, layer_outputs: dict | None = None) -> torch.Tensor:
    """Full recomputation (no cache) of a left-padded batch: positions and mask from
    `prefill_inputs`, as the card's host does. Returns logits [B, S, vocab] in the compute dtype."""
    ids = np.asarray(input_ids, dtype=np.int64)
    ids = ids[None] if ids.ndim == 1 else ids
    step, _ = prefill_inputs(model.spec, ids, attention_mask, ids.shape[1])
    return model(torch.from_numpy(step.input_ids), torch.from_numpy(step.positions),
                 torch.from_numpy(step.visible), layer_outputs=layer_outputs)


class ModuleSession(StaticCacheSession):
    """A batch in flight on a reference module, over a static cache of `max_len` slots."""

    def __init__(self, model, batch: int, max_len: int):
        super().__init__(model.spec, batch, max_len)
        self.model = model
        self.cache = model.new_cache(batch, max_len)

    def step(self, inputs: StepInputs) -> np.ndarray:
        logits = self.model(torch.from_numpy(inputs.input_ids), torch.from_numpy(inputs.positions),
                            torch.from_numpy(inputs.visible), self.cache, inputs.start_slot)
        return logits.float().numpy()


class ModuleReference:
    """The torch backend's family object: `new_session` and golden `full_logits`.

    Subclasses set `model_class` (the family's nn.Module, built as `model_class(spec, dtype)`).
    """

    model_class: type = None  # type: ignore[assignment]

    def __init__(self, spec: ModelSpec, stream: Iterator[tuple[str, np.ndarray]], dtype: str = "float32"):
        self.spec = spec
        self.dtype = dtype
        self.model = self.model_class(spec, dtype).load_canonical(stream)

    def new_session(self, batch: int, max_len: int) -> ModuleSession:
        return ModuleSession(self.model, batch, max_len)

    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        outs: dict | None = {} if layer_outputs else None
        logits = forward_full(self.model, input_ids, attention_mask, outs).float().numpy()
        if outs is None:
            return logits
        return logits, {k: v.float().numpy() for k, v in outs.items()}
