"""The I/O contract of the LLM graphs (prefill.onnx / decode.onnx): names, shapes, dtypes, the
mask fill, and the host-side feeds. Pure numpy: the onnxruntime session, the simulator, the om
converter and the pyACL runner all build their feeds here. Documented in docs/graph_contract.md.

prefill.onnx (S = prefill length, padded on the left; M = cache slots):
    input_ids        int32   [B, S]
    position_ids     int32   [B, S]        (ChatGLM-6B: [B, 2, S] = positions, block ids)
    attention_mask   float32 [B, 1, S, S]  additive: 0 visible, MASK_FILL hidden
  → logits           float32 [B, S, V]
    present_keys     kv      [L, B, KVH, S, D]  (post-rotary)
    present_values   kv      [L, B, KVH, S, D]
    next_token       int32   [B, S]        greedy choice per position: ArgMax over V (first max)
    logits_sum       float32 [B, S]        Σ over V of the logits: finite ⇔ every logit is finite

decode.onnx:
    input_ids        int32   [B, 1]
    position_ids     int32   [B, 1]        (ChatGLM-6B: [B, 2, 1])
    attention_mask   float32 [B, 1, 1, M + 1]  cache slots ⊕ the new token
    past_keys        kv      [L, B, KVH, M, D]
    past_values      kv      [L, B, KVH, M, D]
  → logits           float32 [B, 1, V]
    present_keys     kv      [L, B, KVH, 1, D]  (the host writes them into slot `start_slot`)
    present_values   kv      [L, B, KVH, 1, D]
    next_token       int32   [B, 1]
    logits_sum       float32 [B, 1]

step.onnx (one graph for prefill AND decode, built with `gears`; weights loaded once on the card):
    input_ids        int32   [B, seq]
    position_ids     int32   [B, seq]      (ChatGLM-6B: [B, 2, seq])
    attention_mask   float32 [B, 1, seq, seq + M]  cache slots ⊕ this step's tokens
    past_keys        kv      [L, B, KVH, M, D]
    past_values      kv      [L, B, KVH, M, D]
  → logits           float32 [B, seq, V]
    present_keys     kv      [L, B, KVH, seq, D]
    present_values   kv      [L, B, KVH, seq, D]
    next_token       int32   [B, seq]
    logits_sum       float32 [B, seq]
  `kv` is the activation dtype (float16 for an fp16 export, else float32): the cache crosses the
  graph boundary in the dtype the graph computes in, so no widened copy exists on either side.
  `seq` is a gear: ATC compiles one static graph per value of --dynamic_dims (1 = a decode step,
  the others prefill lengths) inside one OM that shares the weights. A prefill is a step whose
  cache slots are all hidden.
"""

from __future__ import annotations

import numpy as np

# Additive-mask fill for hidden positions: finite in fp16 (no overflow when a graph runs its
# activations in fp16), and exp(fill + score - max) underflows to exactly 0 in the fp32 softmax
# for any realistic score; a query always sees its own slot, so no row is fully hidden.
# It is also ChatGLM-6B's masked_fill value.
MASK_FILL = -10000.0

PREFILL_INPUTS = ("input_ids", "position_ids", "attention_mask")
DECODE_INPUTS = ("input_ids", "position_ids", "attention_mask", "past_keys", "past_values")
OUTPUTS = ("logits", "present_keys", "present_values", "next_token", "logits_sum")
# What a runner copies back per step when only greedy tokens are wanted (issue 13 item 3): the
# ids chosen on the card and the finiteness witness of the logits, instead of the B·S·V logits.
GREEDY_OUTPUTS = ("next_token", "logits_sum")


def layer_output_names(num_layers: int) -> list[str]:
    """Intermediate tensors named for a layer-wise compare with the torch golden's layer outputs."""
    return ["embed"] + [f"layers.{i}" for i in range(num_layers)] + ["final_norm", "logits"]


SEQ = "seq"  # the step graph's gear dimension (an ONNX dim_param)


def io_spec(spec, kind: str, batch: int, seq_len: int, max_len: int, kv_dtype: str = "float32") -> dict:
    """{"inputs": [(name, shape, dtype)], "outputs": [...]} of graph `kind` ("prefill" / "decode" / "step").

    `kv_dtype` is the dtype of past_* / present_*: the graph's activation dtype (float16 for an fp16
    export), so the host cache holds what the card computes and no widened copy exists anywhere.

    In "step" shapes the gear dimension is the string `SEQ` and the mask's last dimension the
    string f"{SEQ}+{max_len}" (see `step_shape` for a concrete gear) — the notation of
    `om_convert.atc.prefill_gear_shapes`, which turns them into --input_shape / --dynamic_dims.
    """
    B, M, L, KVH, D, V = batch, max_len, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.vocab_size
    if kind not in ("prefill", "decode", "step"):
        raise ValueError(f"graph kind must be 'prefill', 'decode' or 'step', got {kind!r}")
    S = {"prefill": seq_len, "decode": 1, "step": SEQ}[kind]
    pos = list(spec.position_scheme.shape(B, S))  # [B, S]; ChatGLM-6B [B, 2, S]
    T = {"prefill": S, "decode": M + 1, "step": f"{SEQ}+{M}"}[kind]
    inputs = [("input_ids", [B, S], "int32"), ("position_ids", pos, "int32"),
              ("attention_mask", [B, 1, S, T], "float32")]
    if kind != "prefill":
        inputs += [("past_keys", [L, B, KVH, M, D], kv_dtype), ("past_values", [L, B, KVH, M, D], kv_dtype)]
    outputs = [("logits", [B, S, V], "float32"), ("present_keys", [L, B, KVH, S, D], kv_dtype),
               ("present_values", [L, B, KVH, S, D], kv_dtype), ("next_token", [B, S], "int32"),
               ("logits_sum", [B, S], "float32")]
    return {"inputs": inputs, "outputs": outputs}


def step_shape(shape, gear: int) -> list[int]:
    """A step-graph shape with its gear dimension(s) resolved for `gear` (e.g. "seq+96" → gear + 96)."""
    return [d if isinstance(d, int) else sum(gear if t.strip() == SEQ else int(t) for t in d.split("+"))
            for d in shape]


def additive(visible: np.ndarray, fill: float = MASK_FILL) -> np.ndarray:
    """bool visibility → float32 additive mask (0 visible, `fill` hidden)."""
    return np.where(visible, np.float32(0.0), np.float32(fill)).astype(np.float32)


def prefill_feeds(step) -> dict[str, np.ndarray]:
    """Feeds of prefill.onnx from the prefill `StepInputs` (start_slot 0, S = the graph's length)."""
    _, new = step.split_visible()  # [B, S, S] among this step's tokens (the cache is empty)
    return {"input_ids": step.input_ids.astype(np.int32),
            "position_ids": step.positions.astype(np.int32),
            "attention_mask": additive(new)[:, None]}


def decode_feeds(step, past_keys: np.ndarray, past_values: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds of decode.onnx from a decode `StepInputs` and the host cache [L, B, KVH, M, D]."""
    past, new = step.split_visible()  # [B, 1, M] earlier slots, [B, 1, 1] the new token
    return {"input_ids": step.input_ids.astype(np.int32),
            "position_ids": step.positions.astype(np.int32),
            "attention_mask": additive(np.concatenate([past, new], -1))[:, None],
            "past_keys": past_keys, "past_values": past_values}


def graph_input_shapes(manifest: dict, kind: str, soc_version: str | None = None):
    """(input_shape {name: dims, -1 for a gear dim}, dynamic_dims gears or None) of an export's graph.

    For a step graph the gear dims become -1 and each gear one `--dynamic_dims` profile (the
    values of every -1 in input order); prefill / decode graphs are static.
    """
    inputs = {i["name"]: i["shape"] for i in manifest["graphs"][kind]["inputs"]}
    gears = manifest.get("gears")
    if kind != "step" or not gears:
        return {k: tuple(int(d) for d in v) for k, v in inputs.items()}, None
    from ascend_adapt.om_convert.atc import prefill_gear_shapes

    gs = prefill_gear_shapes(inputs, gears, SEQ, soc_version=soc_version)
    return dict(gs.input_shape), tuple(gs.dynamic_dims)


def cache_dtype(manifest) -> np.dtype:
    """The KV-cache dtype of an export manifest (its graphs' past_keys input); float32 for exports
    written before the cache followed the activation dtype."""
    for graph in (manifest.get("graphs") or {}).values():
        for inp in graph.get("inputs", ()):
            if inp.get("name") == "past_keys":
                return np.dtype(inp["dtype"])
    return np.dtype(np.float32)
