"""Llama-2 golden: transformers' own `LlamaForCausalLM`, fed from our canonical weight stream.

The weights go canonical → HF names through the adapter's table (`iter_source`, layout "hf") and
`load_state_dict(strict=True)`, so the same path serves HF, sharded, .bin and Meta checkpoints
and proves the adapter's tables and the Meta ↔ HF Q/K permutation. Attention is transformers'
"eager" implementation (plain matmul + fp32 softmax): the golden everything else is compared with.

Sessions run the HF model with its own `DynamicCache`, left padding expressed as a 2-D
`attention_mask` over the cache slots and `position_ids` from the shared bookkeeping
(`ascend_adapt.runtime.lm_inputs`), so every backend sees the same positions.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from ascend_adapt.spec import ModelSpec
from ascend_adapt.runtime.lm_inputs import StepInputs, prefill_inputs
from ascend_adapt.runtime.session import StaticCacheSession

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hf_config(spec: ModelSpec, attn_implementation: str = "eager"):
    """A transformers `LlamaConfig` equivalent to `spec`."""
    from transformers import LlamaConfig

    eos = spec.eos_token_id
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, hidden_act="silu",
        max_position_embeddings=spec.max_position, rms_norm_eps=spec.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=spec.tie_word_embeddings, attention_bias=False, mlp_bias=False,
        bos_token_id=spec.bos_token_id, eos_token_id=list(eos) if isinstance(eos, tuple) else eos,
        pad_token_id=spec.pad_token_id,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def _owned_fp32(arr) -> "torch.Tensor":
    """A writable fp32 tensor with memory of its own (never a view of the caller's array or of a
    memory-mapped checkpoint): one new array, whatever the source dtype."""
    return torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))


def build_hf_model(spec: ModelSpec, canonical: Iterable[tuple[str, np.ndarray]], dtype: str = "float32",
                   attn_implementation: str = "eager"):
    """`LlamaForCausalLM` with the canonical weights, loaded strictly under HF names.

    Args:
        spec: the model.
        canonical: (canonical name, array) pairs, e.g. `adapter.iter_canonical(reader, spec)`.
        dtype: "float32" (golden), "float16" or "bfloat16".
    """
    from transformers import LlamaForCausalLM

    # the Llama table's HF names whatever spec.arch is: families that reuse this golden (the how-to's
    # example) name their weights their own way on disk, but LlamaForCausalLM takes Llama's
    return build_transformers_model(spec, canonical, LlamaForCausalLM, hf_config(spec, attn_implementation), dtype,
                                    names_of="llama")


def build_transformers_model(spec: ModelSpec, canonical: Iterable[tuple[str, np.ndarray]], model_cls, cfg,
                             dtype: str = "float32", names_of: str | None = None):
    """A transformers causal LM (`model_cls(cfg)`) holding the canonical weights under the HF names of
    adapter `names_of`'s table (default `spec.arch`), loaded strictly; the Llama and Qwen goldens'
    one builder."""
    from ascend_adapt.model_zoo.base import ADAPTERS

    adapter = ADAPTERS.get(names_of or spec.arch)
    canon = dict(canonical)
    state = {}
    for name, arr in adapter.iter_source(canon.pop, spec, "hf", available=canon.__contains__):
        state[name] = _owned_fp32(arr)
    if spec.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        model = model_cls(cfg)
    # assign: the module takes these tensors instead of copying them into its own (untouched,
    # never resident) allocation, so the fp32 weights exist once at the peak, not twice
    model.load_state_dict(state, strict=True, assign=True)
    if spec.tie_word_embeddings:
        model.tie_weights()
    # cast parameters only: the rotary inv_freq buffer stays fp32, as from_pretrained(dtype=…) keeps it
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(_DTYPES[dtype])
    return model.eval()


def _hidden(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def run_with_layer_outputs(model, spec: ModelSpec, **kwargs):
    """Run `model(**kwargs)` and collect "embed", "layers.{i}", "final_norm", "logits" tensors."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: outs.__setitem__("embed", _hidden(o)))]
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, inp, o, i=i: outs.__setitem__(f"layers.{i}", _hidden(o))))
    hooks.append(model.model.norm.register_forward_hook(lambda m, i, o: outs.__setitem__("final_norm", _hidden(o))))
    try:
        res = model(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    outs["logits"] = res.logits
    return res, outs


def _cache_keyword(model) -> str:
    """transformers ≥ 5.2x calls the cache argument `cache`; earlier 5.x `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class LlamaSession(StaticCacheSession):
    """A batch in flight on the HF model, with the host bookkeeping of a static cache.

    The HF `DynamicCache` grows by one column per step in lockstep with the slots; the 2-D mask
    is the slot validity (`CacheState.valid`), positions come from `StepInputs.positions`.
    """

    def __init__(self, model, spec: ModelSpec, batch: int, max_len: int):
        super().__init__(spec, batch, max_len)
        self.model = model
        self.cache = None

    @torch.no_grad()
    def step(self, inputs: StepInputs) -> np.ndarray:
        from transformers import DynamicCache

        if inputs.start_slot == 0:
            self.cache = DynamicCache(config=self.model.config)
        end = inputs.start_slot + inputs.seq_len
        mask = torch.from_numpy(self.state.valid[:, :end].astype(np.int64))
        kwargs = {_cache_keyword(self.model): self.cache}
        out = self.model(input_ids=torch.from_numpy(inputs.input_ids),
                         attention_mask=mask, position_ids=torch.from_numpy(inputs.positions),
                         use_cache=True, **kwargs)
        return out.logits.float().numpy()  # the DynamicCache was updated in place


class LlamaReference:
    """What the torch backend needs from a family: a session factory and golden full logits."""

    def __init__(self, spec: ModelSpec, stream, dtype: str = "float32"):
        self.spec = spec
        self.dtype = dtype
        self.model = build_hf_model(spec, stream, dtype)

    def new_session(self, batch: int, max_len: int) -> LlamaSession:
        return LlamaSession(self.model, self.spec, batch, max_len)

    @torch.no_grad()
    def full_logits(self, input_ids, attention_mask=None, layer_outputs: bool = False):
        ids = np.asarray(input_ids, dtype=np.int64)
        ids = ids[None] if ids.ndim == 1 else ids
        step, state = prefill_inputs(self.spec, ids, attention_mask, ids.shape[1])
        kwargs = dict(input_ids=torch.from_numpy(step.input_ids),
                      attention_mask=torch.from_numpy(state.valid.astype(np.int64)),
                      position_ids=torch.from_numpy(step.positions), use_cache=False)
        if not layer_outputs:
            return self.model(**kwargs).logits.float().numpy()
        res, outs = run_with_layer_outputs(self.model, self.spec, **kwargs)
        return res.logits.float().numpy(), {k: v.float().numpy() for k, v in outs.items()}


def load_reference(spec: ModelSpec, stream, dtype: str = "float32") -> LlamaReference:
    """Family hook used by `ascend_adapt.backends.torch.session`."""
    return LlamaReference(spec, stream, dtype)


# ---- layer-streamed calibration (ascend_adapt.quant.calib.stream_act_stats) ----------------------

class _LayerInputs(torch.nn.Module):
    """Stands in for decoder layer i in a skeleton model: records the arguments the model passes
    to that layer (mask, rotary cos/sin, positions) and hands the hidden state on unchanged."""

    def __init__(self, index: int, store: dict):
        super().__init__()
        self.index, self.store = index, store

    def forward(self, hidden_states, *args, **kwargs):
        self.store[self.index] = (hidden_states, args, kwargs)
        return hidden_states


class HFLayerStages:
    """One decoder layer at a time of a transformers golden (Llama, Qwen2, Qwen3), for calibration.

    The model-level part is the golden's own base class (`LlamaModel`, …) built on the meta device
    with its embedding and final norm assigned from the checkpoint and its rotary module built as
    the golden builds it; its decoder layers are replaced by recorders, so one forward of a prompt
    yields exactly the embeddings and the per-layer arguments (causal mask, cos/sin, positions) the
    whole golden passes to each layer. Each layer is then the golden's layer class with its own
    weights (the adapter's HF table, fp32 as `build_hf_model` makes them), called with those
    arguments: the same modules on the same inputs as the whole golden.

    Args:
        spec: the model; source: `ascend_adapt.quant.calib.CanonicalSource` (or anything with
            `get(canonical name)` and `in`); hf_config: the family's `hf_config(spec)`.
    """

    def __init__(self, spec: ModelSpec, source, config, base_prefix: str = "model."):
        from ascend_adapt.model_zoo.base import ADAPTERS
        from transformers import AutoModel

        self.spec, self.source, self.config = spec, source, config
        self.adapter = ADAPTERS.get(spec.arch)
        self.entries = self.adapter.entries(spec, "hf")
        self.prefix = base_prefix
        self.inputs: dict[int, tuple] = {}
        with torch.device("meta"):
            base = AutoModel.from_config(config)
        self.layer_class = type(base.layers[0])
        rotary_class = type(base.rotary_emb)
        base.rotary_emb = rotary_class(config=config)  # real buffers, built as the golden's are
        base.layers = torch.nn.ModuleList(_LayerInputs(i, self.inputs) for i in range(spec.num_layers))
        emb = self._state("embed_tokens.")
        base.embed_tokens.load_state_dict(emb, strict=True, assign=True)
        base.norm.load_state_dict(self._state("norm."), strict=True, assign=True)
        self.base = base.eval()

    def _state(self, under: str) -> dict:
        """HF tensors under `model.<under>` (prefix stripped), fp32 as the golden holds them."""
        full = self.prefix + under
        return {e.source[len(full):]: _owned_fp32(self.adapter.merge(e, [self.source.get(c) for c in e.canonical],
                                                                         self.spec))
                for e in self.entries if e.source.startswith(full)}

    @torch.no_grad()
    def embed(self, ids: np.ndarray):
        """Embeddings [1, S, H] of one prompt and its per-layer arguments (as `full_logits`)."""
        step, state = prefill_inputs(self.spec, ids, None, ids.shape[1])
        self.inputs.clear()
        out = self.base(input_ids=torch.from_numpy(step.input_ids),
                        attention_mask=torch.from_numpy(state.valid.astype(np.int64)),
                        position_ids=torch.from_numpy(step.positions), use_cache=False)
        del out  # the final norm of the embeddings: not used
        ctx = {i: (args, kwargs) for i, (_x, args, kwargs) in self.inputs.items()}
        return self.inputs[0][0], ctx

    def layer(self, i: int):
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # pragma: no cover - older transformers
            from contextlib import nullcontext as no_init_weights
        with torch.device("meta"), no_init_weights():
            layer = self.layer_class(self.config, i)
        layer.load_state_dict(self._state(f"layers.{i}."), strict=True, assign=True)
        return layer.eval()

    def linears(self, i: int, layer) -> dict:
        from ascend_adapt.quant.calib import hf_weight_names

        head = f"{self.prefix}layers.{i}."
        return {n: layer.get_submodule(src[len(head):-len(".weight")])
                for n, src in hf_weight_names(self.spec).items() if n.startswith(f"layers.{i}.")}

    @torch.no_grad()
    def run_layer(self, i: int, layer, x, ctx):
        args, kwargs = ctx[i]
        return _hidden(layer(x, *args, **kwargs))

    @torch.no_grad()
    def final_norm(self, x):
        return self.base.norm(x)

    def head(self):
        name = "lm_head.weight" if "lm_head.weight" in self.source or not self.spec.tie_word_embeddings \
            else "embed.weight"
        w = _owned_fp32(self.source.get(name))
        lm = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lm.load_state_dict({"weight": w}, assign=True)
        return lm.eval()


def import_hf_model_code(config) -> None:
    """Import the transformers code `HFLayerStages(..., config)` builds with (the configuration and
    modelling modules of its family), reading no weight: the model is made on the meta device."""
    from transformers import AutoModel

    with torch.device("meta"):
        AutoModel.from_config(config)


def calib_stages(spec: ModelSpec, source) -> HFLayerStages:
    """Family hook of the layer-streamed calibration (`ascend_adapt.quant.calib.stream_act_stats`)."""
    return HFLayerStages(spec, source, hf_config(spec))


def calib_imports(spec: ModelSpec) -> None:
    """Family hook: the library code of `calib_stages`, imported before `plan_w8a8` reads the
    host's free memory (0.13 GB of transformers on a Llama), so that figure already has it out."""
    import_hf_model_code(hf_config(spec))
