"""The normalized model description every backend consumes.

An adapter turns an HF `config.json` into a `ModelSpec`; the MindSpore models, the ONNX graph
builder, the simulator and the estimator read only this (never the raw config).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields

from ascend_adapt.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of one checkpoint.

    Attributes:
        arch: adapter name ("llama", "chatglm", "chatglm2", "chatglm3", "qwen2", "qwen3"); the
            key the core resolves the architecture's behaviour hooks by (`position_scheme`).
        hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate_size, vocab_size:
            sizes. `num_kv_heads < num_heads` is GQA (query head h uses KV head h // group).
        ffn: "swiglu" (down(silu(gate(x)) * up(x))) or "gelu_tanh" (down(gelu_tanh(up(x)))).
        norm: "rmsnorm" (fp32 island, no bias) or "layernorm" (with bias).
        norm_eps: epsilon of every norm.
        residual: "prenorm" (x + f(norm(x))) or "glm_alpha" (alpha * norm(x) + f(norm(x))).
        residual_alpha: the alpha of "glm_alpha" (ChatGLM-6B: sqrt(56) for every config, §1.12).
        rotary: "half_split" (rotate_half over `rotary_dim`), "interleaved" (adjacent pairs),
            "glm2d" (head split in two halves, each half-split-rotated: positions / block ids).
        rotary_dim: dims rotated per rotation (glm2d: per half).
        rope_theta: rotary base.
        rotary_table_dtype: the precision rule of the cos/sin table (`operators.rotary.rotary_table`):
            "float32" (Llama, ChatGLM3); "float16" (ChatGLM-6B: fp16-rounded inv_freq, then the
            compute dtype); "model_dtype" (ChatGLM2: theta, positions and angles in the compute dtype).
        attn_layer_scaling: ChatGLM-6B's q / (sqrt(d)·(layer+1)) then fp32 softmax of scores·(layer+1).
        mask_fill: value written into masked scores (-10000 for ChatGLM-6B; -inf / dtype min else).
        qkv_bias, o_bias, mlp_bias: which Linear layers have biases.
        qk_norm: per-head RMSNorm of q and k over head_dim before the rotary (Qwen3), weights
            `layers.{i}.attn.q_norm.weight` / `attn.k_norm.weight` of shape [head_dim].
        tie_word_embeddings: the embedding and the output head share one matrix.
        tied_source: which canonical tensor a tied pair uses: "embed.weight" (transformers'
            default) or "lm_head.weight" (ChatGLM-6B: the checkpoint's lm_head wins on load, §1.12).
        max_position: longest supported sequence.
        kv_layout: "bhsd" (Llama, batch-first) or "sbhd" (ChatGLM-6B / 2 / 3, seq-first) in the reference.
        bos/eos/pad/mask/gmask token ids; `torch_dtype` of the checkpoint.
    """

    arch: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    ffn: str
    norm: str
    norm_eps: float
    residual: str = "prenorm"
    residual_alpha: float = 1.0
    rotary: str = "half_split"
    rotary_dim: int = 0
    rope_theta: float = 10000.0
    rotary_table_dtype: str = "float32"
    attn_layer_scaling: bool = False
    mask_fill: float = float("-inf")
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    tied_source: str = "embed.weight"
    max_position: int = 2048
    kv_layout: str = "bhsd"
    bos_token_id: int | None = None
    eos_token_id: int | tuple | None = None
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    gmask_token_id: int | None = None
    torch_dtype: str = "float32"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        """Refuse sizes a config could not have produced (a spec read back from a manifest is
        checked too): the same bounds as the config validator, so nothing is sized by a bad value."""
        from ascend_adapt.checkpoint.config import (MAX_HEAD_DIM, MAX_HEADS, MAX_HIDDEN, MAX_INTERMEDIATE,
                                                     MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB)

        bounds = {"hidden_size": MAX_HIDDEN, "num_layers": MAX_LAYERS, "num_heads": MAX_HEADS,
                  "num_kv_heads": MAX_HEADS, "head_dim": MAX_HEAD_DIM, "intermediate_size": MAX_INTERMEDIATE,
                  "vocab_size": MAX_VOCAB, "max_position": MAX_POSITIONS}
        for name, hi in bounds.items():
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or not 1 <= v <= hi:
                raise ConfigError(f"model spec: {name} = {v!r:.60}, expected an integer in [1, {hi}]",
                                  "the spec comes from config.json or a manifest written by ascend-adapt; "
                                  "regenerate it from the checkpoint's config.json")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model spec: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                              f"{self.num_kv_heads}", "regenerate the spec from the checkpoint's config.json")
        if not isinstance(self.norm_eps, numbers.Real) or not math.isfinite(self.norm_eps):
            raise ConfigError(f"model spec: norm_eps = {self.norm_eps!r:.60}, expected a finite number",
                              "regenerate the spec from the checkpoint's config.json")

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def kv_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def position_scheme(self):
        """The architecture's `PositionScheme` (position_ids of a prefill / decode step and their
        shape, the bidirectional prompt prefix, the tokens a prompt ends with), the hook its
        adapter provides. Not a field: it is resolved from `arch` through the adapter registry on
        each use, so a spec read back from export.json or a manifest has it too; an `arch` no
        adapter registered in this process gets the core's default (1-D positions)."""
        from ascend_adapt.runtime.lm_inputs import scheme_for

        return scheme_for(self)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, (list, tuple)):
            return tuple(int(e) for e in self.eos_token_id)
        return (int(self.eos_token_id),)

    def canonical_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every canonical tensor (see `model_zoo/base.py` for the names)."""
        H = self.hidden_size
        s: dict[str, tuple[int, ...]] = {"embed.weight": (self.vocab_size, H)}
        norm_bias = self.norm == "layernorm"
        for i in range(self.num_layers):
            p = f"layers.{i}."
            s[p + "attn_norm.weight"] = (H,)
            if norm_bias:
                s[p + "attn_norm.bias"] = (H,)
            s[p + "attn.q.weight"] = (self.q_dim, H)
            s[p + "attn.k.weight"] = (self.kv_dim, H)
            s[p + "attn.v.weight"] = (self.kv_dim, H)
            if self.qkv_bias:
                s[p + "attn.q.bias"] = (self.q_dim,)
                s[p + "attn.k.bias"] = (self.kv_dim,)
                s[p + "attn.v.bias"] = (self.kv_dim,)
            if self.qk_norm:
                s[p + "attn.q_norm.weight"] = (self.head_dim,)
                s[p + "attn.k_norm.weight"] = (self.head_dim,)
            s[p + "attn.o.weight"] = (H, self.q_dim)
            if self.o_bias:
                s[p + "attn.o.bias"] = (H,)
            s[p + "mlp_norm.weight"] = (H,)
            if norm_bias:
                s[p + "mlp_norm.bias"] = (H,)
            if self.ffn == "swiglu":
                s[p + "mlp.gate.weight"] = (self.intermediate_size, H)
            s[p + "mlp.up.weight"] = (self.intermediate_size, H)
            s[p + "mlp.down.weight"] = (H, self.intermediate_size)
            if self.mlp_bias:
                s[p + "mlp.up.bias"] = (self.intermediate_size,)
                s[p + "mlp.down.bias"] = (H,)
        s["final_norm.weight"] = (H,)
        if norm_bias:
            s["final_norm.bias"] = (H,)
        s["lm_head.weight"] = (self.vocab_size, H)
        return s

    def param_count(self) -> int:
        shapes = self.canonical_shapes()
        if self.tie_word_embeddings:
            shapes.pop("embed.weight" if self.tied_source == "lm_head.weight" else "lm_head.weight", None)
        return sum(math.prod(v) for v in shapes.values())

    def kv_cache_bytes(self, batch: int, seq_len: int, bytes_per_elem: int = 2) -> int:
        """K and V for every layer: 2 · layers · batch · seq · kv_heads · head_dim · bytes."""
        return 2 * self.num_layers * batch * seq_len * self.kv_dim * bytes_per_elem

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["mask_fill"] == float("-inf"):
            d["mask_fill"] = "-inf"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"model spec: unknown field(s) {', '.join(map(str, unknown))[:200]}",
                              "the manifest was written by another version of ascend-adapt; rebuild it")
        if d.get("mask_fill") == "-inf":
            d["mask_fill"] = float("-inf")
        if isinstance(d.get("eos_token_id"), list):
            d["eos_token_id"] = tuple(d["eos_token_id"])
        return cls(**d)


def glm_alpha(num_layers_of_block_default: int = 28) -> float:
    """ChatGLM-6B's residual scale: sqrt(2·28) — the blocks always use their default of 28 layers."""
    return math.sqrt(2 * num_layers_of_block_default)
