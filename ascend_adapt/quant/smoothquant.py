"""The W8A8 plan: SmoothQuant smoothing vectors, static per-tensor activation scales, and the
rule that says which Linears stay in fp16.

Math (Xiao et al., "SmoothQuant", ICML 2023, eq. 4). For a Linear y = x·Wᵀ with input channels j,
calibration gives `amax[j] = max |x[..., j]|` (`ascend_adapt.quant.calib`) and the weight gives
`wmax[j] = max_o |W[o, j]|` (over every Linear reading that input, stacked). Then

    s[j]   = amax[j]^α / wmax[j]^(1-α)           (clamped to ≥ 1e-5; 1 where either max is 0)
    x'     = x / s,   W' = W · diag(s)            (x'·W'ᵀ = x·Wᵀ exactly in real arithmetic)
    act_scale = max_j (amax[j] / s[j]) / 127      (static, per tensor, symmetric: x' ≈ act_scale·q,
                                                   q = clip(rint(x' / act_scale), -127, 127))

and W' is quantized per output channel by `ascend_adapt.quant.weights.quantize_per_channel`. α
moves difficulty from activations (α → 1) to weights (α → 0); 0.5 is the paper's default for
OPT / BLOOM / Llama-style models. The default here is α = "auto": per input group, the α of
`ALPHA_GRID` (0, 0.1, …, 1: Intel Neural Compressor's layer-wise auto-tuning space) whose int8
output Q(x/s)·Q(W·s)ᵀ is closest to x·Wᵀ on calibration inputs HELD OUT from the statistic
(`alpha_errors`: two folds of prompts, each quantized with the other's amax). In-sample the
search cannot see clipping and drifts to α → 1, which flattens every channel to exactly its
calibration maximum; text unlike the calibration set then clips (SmolLM2: α = 0.85 everywhere
+23.8 % perplexity on 2986 tokens through the real path).

Linears sharing one input share one `s` (and hence one `act_scale`): q/k/v (ChatGLM's fused
`query_key_value` is those three), gate/up. Where that input is a norm's output and the residual
branch does not reuse it (`spec.residual == "prenorm"`), `1/s` folds into the norm's weight (and
bias, for LayerNorm): `fold` names the norm weight. o_proj / down_proj read the attention
context / the FFN product, and ChatGLM-6B's "glm_alpha" residual reuses the norm output, so
there `fold` is None and the graph divides by `s` with an explicit Mul before the quant.

Keep-fp16 rule (`KeepRule`), defaults and why:

- `lm_head` stays fp16: the SmoothQuant paper keeps it (and the embedding) in floating point; it
  decides every token directly and is the one Linear whose error is not averaged by later layers.
- `down_proj` of the first and last decoder layers (`edge_layers=1, edge_linears=mlp.down`): the
  FFN-output input of Llama-family models carries the largest activation outliers ("massive
  activations", Sun et al. 2024: in the first layers and the last ones), and it has no norm to fold
  a smoothing vector into; msModelSlim's published W8A8 Llama-2 recipes disable exactly these
  down_proj layers (their `disable_names`). Keeping all Linears of the edge layers costs ~2/L of
  the int8 saving for little gain over keeping their down_proj, so the default is the narrower one.
- any `down_proj` whose smoothed input still has `max / median` of its per-channel maxima above
  `outlier_ratio` (32): with one per-tensor scale a median channel then gets < 127/32 ≈ 4 int8
  levels (2 bits), its rounding noise (step/√12) over 7 % of its own range on most channels.
- any input group whose held-out relative int8 output error at its α is above `max_error` (4 %):
  the well-conditioned inputs (SmolLM2's q/k/v, a norm output with the smoothing folded in)
  measure ~1 %, so 4 % is an input with ~2 bits fewer — the 2-bit line of `outlier_ratio`,
  measured on the output. On SmolLM2-135M it keeps 24 more down_proj and 4 o_proj (31 of 211
  Linears fp16) and takes the real-path perplexity rise on 2986 tokens from +9.1 % (α = 0.5,
  without it) to +2.1 % (docs/PERFORMANCE.md).
- user patterns (`keep`, fnmatch over canonical or HF names) keep more.

A kept Linear keeps its whole input group (q/k/v, gate/up) in fp16: one quantized input per
group in the graph, and vLLM-Ascend refuses fused shards of mixed precision.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ascend_adapt.errors import ConfigError

INT8_MAX = 127
MIN_SMOOTH = 1e-5  # the SmoothQuant reference's clamp: s never reaches 0
# α of the SmoothQuant authors' published perplexity runs (mit-han-lab/smoothquant README,
# smoothquant/ppl_eval.py commands: Llama-2-7B/13B and Llama-3-8B 0.85, Llama-2-70B 0.9,
# Mistral-7B 0.8). Only the families with a published value; others use the default 0.5.
RECOMMENDED_ALPHA = {"llama": 0.85}
# The default α ("auto"): chosen per input group from this grid, the one whose int8 Linear output
# Q(x/s)·Q(W·s)ᵀ is closest (sum of squares) to x·Wᵀ on the calibration inputs. The grid is Intel
# Neural Compressor's layer-wise SmoothQuant auto-tuning space (alpha_min 0.0, alpha_max 1.0,
# alpha_step 0.1: IPEX 2.5 "Smooth Quant Recipe Tuning API", which runs INC's auto-α).
ALPHA_GRID = tuple(i / 10 for i in range(11))
# calibration tokens kept per group input for the α search (a uniform stride over the set)
SEARCH_TOKENS = 1024
# keep-fp16 bound on an input group's held-out relative int8 output error (KeepRule.max_error)
MAX_ERROR = 0.04


# ------------------------------------------------------------------------------------------------
# the keep-fp16 rule

@dataclass(frozen=True)
class KeepRule:
    """Which Linears stay in fp16 under W8A8.

    Attributes:
        lm_head: keep the output head in fp16.
        edge_layers: how many first and last decoder layers the edge rule covers (0 = none).
        edge_linears: canonical Linear suffixes of those layers kept ("mlp.down"; "*" = all).
        outlier_linears: suffixes checked against `outlier_ratio`.
        outlier_ratio: keep a checked Linear whose smoothed input amax has max/median above it
            (`math.inf` = never).
        max_error: keep an input group (any Linear) whose int8 output error, relative RMS on
            held-out calibration inputs at its α (`alpha_errors`), is above it (`math.inf` = never).
        keep: fnmatch patterns over canonical ("layers.3.mlp.*") or HF weight names, always kept.
    """

    lm_head: bool = True
    edge_layers: int = 1
    edge_linears: tuple[str, ...] = ("mlp.down",)
    outlier_linears: tuple[str, ...] = ("mlp.down",)
    outlier_ratio: float = 32.0
    max_error: float = MAX_ERROR
    keep: tuple[str, ...] = ()

    _FIELDS = ("lm_head", "edge_layers", "edge_linears", "outlier_linears", "outlier_ratio", "max_error", "keep")

    def __post_init__(self):
        if not isinstance(self.edge_layers, int) or isinstance(self.edge_layers, bool) or self.edge_layers < 0:
            raise ConfigError(f"keep rule: edge_layers = {self.edge_layers!r}, expected an integer ≥ 0",
                              "e.g. edge_layers=1 keeps the first and the last decoder layer's Linears listed "
                              "in edge_linears")
        if not isinstance(self.outlier_ratio, (int, float)) or not self.outlier_ratio > 1:
            raise ConfigError(f"keep rule: outlier_ratio = {self.outlier_ratio!r}, expected a number > 1 "
                              "(or inf / off)", "e.g. outlier_ratio=32")
        if not isinstance(self.max_error, (int, float)) or isinstance(self.max_error, bool) or not self.max_error > 0:
            raise ConfigError(f"keep rule: max_error = {self.max_error!r}, expected a number > 0 (or off)",
                              "e.g. max_error=0.05 (5 % relative output error)")
        for what in ("edge_linears", "outlier_linears", "keep"):
            v = getattr(self, what)
            if not isinstance(v, tuple) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"keep rule: {what} = {v!r}, expected a list of names",
                                  "e.g. edge_linears=mlp.down,attn.o")

    # -- parsing ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "keep rule") -> "KeepRule":
        """A rule from a dict with any of the field names (lists or comma-separated strings)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}",
                              f"use keys {', '.join(cls._FIELDS)}")
        unknown = sorted(set(d) - set(cls._FIELDS))
        if unknown:
            raise ConfigError(f"{source}: unknown key '{unknown[0]}'", f"known keys: {', '.join(cls._FIELDS)}")
        kw = {}
        for k, v in d.items():
            kw[k] = _coerce(k, v, source)
        return cls(**kw)

    @classmethod
    def parse(cls, text) -> "KeepRule":
        """A rule from the CLI: a JSON file path, a JSON object, or `key=value;key=value`.

        Examples: `edge_layers=2;edge_linears=mlp.down,attn.o;outlier_ratio=off;keep=layers.5.*`,
        `lm_head=false`, `rule.json`.

        Raises:
            ConfigError: unreadable file, bad JSON, unknown key or bad value (naming it).
        """
        if isinstance(text, KeepRule):
            return text
        s = str(text).strip()
        try:
            is_file = Path(s).is_file()
        except (OSError, ValueError):  # too long / not a path: a rule text
            is_file = False
        if s.endswith(".json") or is_file:
            p = Path(s)
            if not p.is_file():
                raise ConfigError(f"--keep-fp16: rule file '{p}' does not exist",
                                  "pass a JSON file, or key=value pairs separated by ';'")
            try:
                d = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"--keep-fp16: cannot read '{p}' as JSON ({exc})",
                                  "write a JSON object with the rule's keys") from None
            return cls.from_dict(d, str(p))
        if s.startswith("{"):
            try:
                return cls.from_dict(json.loads(s), "--keep-fp16")
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--keep-fp16: not valid JSON ({exc.msg})",
                                  "or use key=value pairs separated by ';'") from None
        d = {}
        for item in filter(None, (x.strip() for x in s.split(";"))):
            k, eq, v = item.partition("=")
            if not eq:
                raise ConfigError(f"--keep-fp16: '{item}' is not key=value",
                                  f"e.g. edge_layers=1;outlier_ratio=32 (keys: {', '.join(cls._FIELDS)})")
            d[k.strip()] = v.strip()
        return cls.from_dict(d, "--keep-fp16")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("outlier_ratio", "max_error"):
            if math.isinf(getattr(self, k)):
                d[k] = "off"
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def describe(self) -> str:
        """One line a user can read (and paste back into --keep-fp16)."""
        parts = [f"lm_head={'true' if self.lm_head else 'false'}", f"edge_layers={self.edge_layers}",
                 f"edge_linears={','.join(self.edge_linears) or '-'}",
                 f"outlier_linears={','.join(self.outlier_linears) or '-'}",
                 f"outlier_ratio={'off' if math.isinf(self.outlier_ratio) else f'{self.outlier_ratio:g}'}",
                 f"max_error={'off' if math.isinf(self.max_error) else f'{self.max_error:g}'}"]
        if self.keep:
            parts.append(f"keep={','.join(self.keep)}")
        return ";".join(parts)

    # -- application -----------------------------------------------------------------------------
    def reasons(self, name: str, hf_name: str, layer: int | None, num_layers: int,
                smoothed_ratio: float, error: float | None = None) -> list[str]:
        """Why Linear `name` stays fp16 under this rule (empty: it is quantized). `error`: its
        group's held-out int8 output error (None: not measured, the max_error test is skipped)."""
        out = []
        if name == "lm_head":
            if self.lm_head:
                out.append("lm_head stays fp16")
            if error is not None and error > self.max_error:
                out.append(f"int8 output error {100 * error:.1f} % > {100 * self.max_error:g} % (held-out calibration)")
            return out + [f"matches keep pattern '{p}'" for p in self.keep
                          if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(hf_name, p)]
        suffix = name.split(".", 2)[2]
        edge = layer is not None and (layer < self.edge_layers or layer >= num_layers - self.edge_layers)
        if edge and any(fnmatch.fnmatchcase(suffix, p) for p in self.edge_linears):
            out.append(f"edge layer {layer} ({'first' if layer < self.edge_layers else 'last'} "
                       f"{self.edge_layers})")
        if any(fnmatch.fnmatchcase(suffix, p) for p in self.outlier_linears) and smoothed_ratio > self.outlier_ratio:
            out.append(f"activation outliers: max/median {smoothed_ratio:.0f} > {self.outlier_ratio:g}")
        if error is not None and error > self.max_error:
            out.append(f"int8 output error {100 * error:.1f} % > {100 * self.max_error:g} % (held-out calibration)")
        out += [f"matches keep pattern '{p}'" for p in self.keep
                if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name + ".weight", p)
                or fnmatch.fnmatchcase(hf_name, p)]
        return out


def _coerce(key: str, v, source: str):
    bad = ConfigError(f"{source}: {key} = {v!r:.80} is not valid",
                      {"lm_head": "use true or false", "edge_layers": "use an integer ≥ 0",
                       "outlier_ratio": "use a number > 1, or off",
                       "max_error": "use a number > 0 (0.05 = 5 %), or off"}.get(key, "use a comma-separated list"))
    if key == "lm_head":
        if isinstance(v, bool):
            return v
        if str(v).lower() in ("true", "1", "yes", "keep"):
            return True
        if str(v).lower() in ("false", "0", "no", "quantize"):
            return False
        raise bad
    if key == "edge_layers":
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)
        except (TypeError, ValueError):
            raise bad from None
    if key in ("outlier_ratio", "max_error"):
        if str(v).lower() in ("off", "inf", "none", "never"):
            return math.inf
        try:
            if isinstance(v, bool):
                raise ValueError
            return float(v)
        except (TypeError, ValueError):
            raise bad from None
    if isinstance(v, str):
        return tuple(x.strip() for x in v.split(",") if x.strip())
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise bad


# ------------------------------------------------------------------------------------------------
# the plan

@dataclass
class LinearPlan:
    """The W8A8 recipe of one quantized Linear.

    Attributes:
        name: canonical prefix ("layers.0.attn.q"); its weight is `name + ".weight"`.
        hf_name: the HF checkpoint's weight name holding it (ChatGLM's fused
            `…query_key_value.weight` for q, k and v).
        smooth: float32 [in]: x is divided by it, W's input columns multiplied by it.
        act_scale: float32 scalar: static per-tensor int8 step of x / smooth (symmetric, offset 0).
        fold: the norm weight (canonical name) the division folds into, or None (explicit Mul).
        group: canonical prefixes sharing this input (and `smooth`, `act_scale`).
        amax: float32 [in]: the calibration statistic, per input channel max |x| before smoothing.
        alpha: the migration strength `smooth` was made with (the group's searched α under "auto").
    """

    name: str
    hf_name: str
    smooth: np.ndarray
    act_scale: np.float32
    fold: str | None
    group: tuple[str, ...]
    amax: np.ndarray = field(repr=False)
    alpha: float = 0.5

    @property
    def weight_name(self) -> str:
        return self.name + ".weight"


@dataclass
class W8A8Plan:
    """Per quantized Linear: smoothing vector, activation scale, fold target; plus what stays fp16.

    Attributes:
        arch: the spec's architecture.
        alpha: SmoothQuant migration strength: a number in [0, 1] for every group, or "auto"
            (each group's own α, searched over `grid`; `LinearPlan.alpha` holds it).
        rule: the keep-fp16 rule applied.
        linears: canonical prefix → `LinearPlan`, quantized Linears only, in model order.
        kept: canonical prefix → reasons it stays fp16.
        calib: the calibration set ("builtin" or its path); tokens, prompts: its size.
        grid: the α grid searched ("auto"; empty otherwise).
        search: group leader (its first Linear) → squared int8 output error per α of `grid`
            ("auto"; on the `search_tokens` calibration tokens kept for the search).
        search_tokens: calibration tokens the search ran on.
    """

    arch: str
    alpha: float | str
    rule: KeepRule
    linears: dict[str, LinearPlan]
    kept: dict[str, list[str]]
    calib: str = "builtin"
    tokens: int = 0
    prompts: int = 0
    grid: tuple[float, ...] = ()
    search: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    search_tokens: int = 0

    def get(self, name: str) -> LinearPlan | None:
        """The plan of a Linear by canonical prefix, canonical weight name or HF weight name
        (None when it stays fp16 or is not a Linear)."""
        key = name[: -len(".weight")] if name.endswith(".weight") and name[: -len(".weight")] in self.linears \
            else name
        if key in self.linears:
            return self.linears[key]
        for lp in self.linears.values():
            if lp.hf_name == name:
                return lp
        return None

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def folds(self) -> dict[str, np.ndarray]:
        """Norm weight name → the smooth vector to divide it (and its bias) by."""
        return {lp.fold: lp.smooth for lp in self.linears.values() if lp.fold is not None}

    def group_alphas(self) -> dict[str, float]:
        """Quantized input group (its first Linear's canonical prefix) → the α of its smoothing."""
        return {lp.group[0]: float(lp.alpha) for lp in self.linears.values()}

    def alpha_manifest(self) -> dict:
        """What export.json records of α: the setting, and under "auto" the grid and each group's α."""
        out = {"alpha": self.alpha if isinstance(self.alpha, str) else float(self.alpha)}
        if self.alpha == "auto":
            out.update({"alpha_grid": [float(a) for a in self.grid], "alpha_search_tokens": int(self.search_tokens),
                        "alpha_per_group": self.group_alphas()})
        errs = self.group_errors()
        if errs:
            out["int8_output_error_per_group"] = {k: round(v, 6) for k, v in errs.items()}
        return out

    def group_errors(self) -> dict[str, float]:
        """Input group leader → held-out relative int8 output error at its α (every measured group,
        quantized or kept)."""
        out = {}
        for lead, err in self.search.items():
            lp = self.linears.get(lead)
            a = lp.alpha if lp is not None else (float(self.alpha) if self.alpha != "auto"
                                                 else self.grid[int(np.argmin(err))])
            if a in self.grid:
                out[lead] = float(err[self.grid.index(a)])
        return out

    def summary(self) -> list[str]:
        """Lines for a report: α, the rule, the counts, and every fp16 Linear with its reason."""
        if self.alpha == "auto":
            alphas = self.group_alphas()
            counts = {}
            for a in alphas.values():
                counts[a] = counts.get(a, 0) + 1
            hist = ", ".join(f"{a:g} ×{c}" for a, c in sorted(counts.items()))
            how = (f"SmoothQuant α=auto: per input group from {{{', '.join(f'{a:g}' for a in self.grid)}}}, "
                   f"least held-out int8 output error on {self.search_tokens} calibration tokens")
        else:
            how = f"SmoothQuant α={self.alpha:g}"
        out = [f"W8A8 ({how}, calibration {self.calib}: {self.prompts} prompts, "
               f"{self.tokens} tokens): {len(self.linears)} Linears int8, {len(self.kept)} fp16",
               f"keep-fp16 rule: {self.rule.describe()}"]
        if self.alpha == "auto":
            out.append(f"α chosen: {hist or 'none'} (groups)")
            by_layer: dict[str, list[str]] = {}
            for lead, a in alphas.items():
                parts = lead.split(".")
                key = parts[1] if parts[0] == "layers" else lead
                by_layer.setdefault(key, []).append(f"{'.'.join(parts[2:]) or lead}={a:g}")
            out += [f"  α layer {k}: {' '.join(v)}" if k.isdigit() else f"  α {k}: {' '.join(v)}"
                    for k, v in by_layer.items()]
        out += [f"  fp16 {n}: {'; '.join(r)}" for n, r in self.kept.items()]
        return out


def _groups(spec) -> list[tuple[tuple[str, ...], str | None]]:
    """Input-sharing groups of a spec's decoder Linears, each with its fold target (or None)."""
    out = []
    fold_ok = spec.residual == "prenorm"
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        out.append(((p + "attn.q", p + "attn.k", p + "attn.v"), p + "attn_norm.weight" if fold_ok else None))
        out.append(((p + "attn.o",), None))
        mlp = (p + "mlp.gate", p + "mlp.up") if spec.ffn == "swiglu" else (p + "mlp.up",)
        out.append((mlp, p + "mlp_norm.weight" if fold_ok else None))
        out.append(((p + "mlp.down",), None))
    return out


def smooth_factors(amax, wmax, alpha: float) -> np.ndarray:
    """SmoothQuant's s = amax^α / wmax^(1-α) per input channel (float32; 1 where either is 0)."""
    a = np.asarray(amax, np.float64)
    w = np.asarray(wmax, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.power(a, alpha) / np.power(w, 1.0 - alpha)
    s = np.where((a > 0) & (w > 0) & np.isfinite(s), np.maximum(s, MIN_SMOOTH), 1.0)
    return s.astype(np.float32)


def act_scale_of(amax, smooth) -> np.float32:
    """Static symmetric int8 step of x / smooth: max_j(amax[j] / smooth[j]) / 127 (1 when all zero)."""
    m = float(np.max(np.asarray(amax, np.float32) / np.asarray(smooth, np.float32))) if np.size(amax) else 0.0
    return np.float32(m / INT8_MAX) if m > 0 else np.float32(1.0)


def check_alpha(alpha) -> float | str:
    """A valid α: a number in [0, 1], or "auto" (searched per input group)."""
    if isinstance(alpha, str) and alpha.strip().lower() == "auto":
        return "auto"
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"--smooth-alpha: {alpha!r} is not in [0, 1]",
                          "leave it out for the default (auto: α searched per input group); 0.5 is "
                          "SmoothQuant's paper default; larger moves more of the outliers into the weights")
    return float(alpha)


def format_alpha(alpha) -> str:
    """α for a message: "auto" or the number."""
    return alpha if isinstance(alpha, str) else f"{alpha:g}"


def alpha_errors(x, w, wmax, folds=None, grid=ALPHA_GRID) -> np.ndarray:
    """Held-out relative int8 output error of one input group for each α of `grid` (float64).

    The calibration rows are split into folds (by prompt). For each fold f and α, the statistic
    is taken from the OTHER folds' rows only: amax'[j] = max |x[¬f, j]|, s = smooth_factors(amax',
    wmax, α), step = act_scale_of(amax', s); then on the rows of f the group computes
    Q(x/s)·Q(W·s)ᵀ, with Q(x/s) = step·clip(rint((x·(1/s))/step), ±127) (AscendQuant, static
    per tensor: a held-out value beyond the statistic clips, as text unlike the calibration set
    does on the card) and Q(W·s) = dequantize(quantize_per_channel(W, s)). The error is
    sqrt(Σ (Q(x/s)·Q(W·s)ᵀ − x·Wᵀ)² / Σ (x·Wᵀ)²) over all folds' rows (float32 products, float64
    sums). An in-sample error (one fold) never sees clipping and favours α → 1, which flattens
    every channel to exactly its calibration maximum; held out, that α clips.

    Args:
        x: float32 [T, in]: calibration inputs of the group.
        w: float32 [out, in]: the group's weights stacked (q/k/v: their rows one after another).
        wmax: float32 [in]: per-channel max |W| of the group.
        folds: int [T]: the fold of each row (None or a single fold: in-sample, the statistic from
            all rows).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
    f = np.zeros(x.shape[0], np.int64) if folds is None else np.asarray(folds)
    ids = np.unique(f)
    parts = [(np.ones_like(f, bool), np.ones_like(f, bool))] if ids.size < 2 else \
        [(f != k, f == k) for k in ids]
    with torch.no_grad():
        y = x @ wt.T
        energy = float(torch.sum(y.double() ** 2))
        err = np.zeros(len(grid), np.float64)
        for train, test in parts:
            tr, te = torch.from_numpy(train), torch.from_numpy(test)
            am = x[tr].abs().amax(dim=0).numpy()
            for i, a in enumerate(grid):
                sm = smooth_factors(am, wmax, a)
                step = float(act_scale_of(am, sm))
                inv = torch.from_numpy(np.float32(1.0) / sm)
                xq = torch.clamp(torch.round((x[te] * inv) / step), -INT8_MAX, INT8_MAX) * step
                # quantize_per_channel(w, sm), in torch (the same float32 steps), in place on one
                # copy of W·s: besides W (the caller's) the only weight-sized tensor alive
                # (out-of-place, W·s, W·s/step and its rounding were alive at once, and the last
                # grid point's int8 image until the next one was made: 5 weights, not 2)
                wq = wt * torch.from_numpy(sm)
                lo, hi = torch.aminmax(wq, dim=1, keepdim=True)  # max_o |W·s| with no |W·s| copy
                sc = torch.maximum(hi, -lo) / np.float32(INT8_MAX)
                sc = torch.where(sc > 0, sc, torch.ones_like(sc))
                wq.div_(sc).round_().clamp_(-INT8_MAX, INT8_MAX).mul_(sc)
                d = xq @ wq.T
                del wq
                d.sub_(y[te])
                d = d.double()
                err[i] += float(torch.sum(d.pow_(2)))
                del d
    return np.sqrt(err / energy) if energy > 0 else err


def search_alphas(spec, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray], folds=None,
                  grid=ALPHA_GRID, include_head: bool = False, groups=None) -> dict[str, np.ndarray]:
    """`alpha_errors` of every decoder input group (and the head with `include_head`).

    Args:
        inputs: canonical Linear prefix → float32 [T, in] calibration inputs (the first Linear of
            each group is enough: the group shares it).
        weights: canonical prefix → float32 weight [out, in].
        folds: int [T]: the fold (prompt parity) of each row, shared by all inputs.
        groups: only these input groups (tuples of canonical prefixes, e.g. one decoder layer's
            under the layer-streamed calibration); None: every group of the spec.

    Returns:
        group leader (first Linear) → held-out relative error per α of `grid`.
    """
    from .calib import return_freed_memory

    grid = tuple(float(check_alpha(a)) for a in grid)
    if not grid or "auto" in grid:
        raise ConfigError(f"W8A8 α search: grid {grid!r} must be numbers in [0, 1]", "e.g. 0, 0.1, …, 1")
    if groups is None:
        groups = [names for names, _ in _groups(spec)] + ([("lm_head",)] if include_head else [])
    out = {}
    for names in groups:
        if names[0] not in inputs:
            raise ConfigError(f"W8A8 α search: no calibration inputs kept for '{names[0]}'",
                              "collect them with collect_act_stats(..., keep_inputs=...)")
        # the freed heap pages of the previous group (its outputs, below glibc's mmap threshold)
        # go back to the OS before this one's weight-sized tensors are made
        return_freed_memory()
        w = np.concatenate([np.asarray(weights[n], np.float32) for n in names], axis=0)
        wmax = np.maximum(w.max(axis=0), -w.min(axis=0))  # = max |w| per column, with no |w| copy
        out[names[0]] = alpha_errors(inputs[names[0]], w, wmax, folds, grid)
        del w
    return out


def plan_from_stats(spec, amax: dict[str, np.ndarray], weight_colmax: dict[str, np.ndarray], *,
                    alpha: float | str = 0.5, rule: KeepRule | None = None, hf_names: dict[str, str] | None = None,
                    calib: str = "builtin", tokens: int = 0, prompts: int = 0,
                    search: dict[str, np.ndarray] | None = None, grid=ALPHA_GRID,
                    search_tokens: int = 0) -> W8A8Plan:
    """The plan from statistics (the pure part of `plan_w8a8`).

    Args:
        spec: the model.
        amax: canonical Linear prefix → per-input-channel max |x| (calibration).
        weight_colmax: canonical Linear prefix → per-input-channel max |W[:, j]|.
        alpha: migration strength in [0, 1], or "auto": each group takes the α of `grid` with the
            least error in `search` (the first one on a tie).
        rule: keep-fp16 rule (default `KeepRule()`); its outlier test sees the input smoothed
            with the group's α.
        hf_names: canonical prefix → HF weight name (default: from the adapter's table).
        search: "auto": group leader → error per α of `grid` (`search_alphas`).
        search_tokens: "auto": calibration tokens the search ran on (for the report).
    """
    from .calib import hf_weight_names, linear_names

    alpha = check_alpha(alpha)
    grid = tuple(float(check_alpha(a)) for a in grid)
    search = {k: np.asarray(v, np.float64) for k, v in (search or {}).items()}
    for lead, err in search.items():
        if err.shape != (len(grid),):
            raise ConfigError(f"W8A8 plan: the α search of '{lead}' has {err.size} errors for a grid "
                              f"of {len(grid)}", "search with the same grid (search_alphas(..., grid))")

    def group_alpha(lead: str) -> float:
        if alpha != "auto":
            return alpha
        if lead not in search:
            raise ConfigError(f"W8A8 plan: α=auto but no α search for '{lead}'",
                              "run search_alphas on the calibration inputs, or pass a number as alpha")
        return grid[int(np.argmin(search[lead]))]

    def group_error(lead: str, a: float) -> float | None:
        return float(search[lead][grid.index(a)]) if lead in search and a in grid else None
    rule = rule or KeepRule()
    hf = hf_names if hf_names is not None else hf_weight_names(spec)
    missing = [n for n in linear_names(spec) if n not in amax]
    if missing:
        raise ConfigError(f"W8A8 plan: no calibration statistic for '{missing[0]}'",
                          "collect statistics with ascend_adapt.quant.calib.collect_act_stats on this model")
    linears: dict[str, LinearPlan] = {}
    kept: dict[str, list[str]] = {}
    for names, fold in _groups(spec):
        a = np.asarray(amax[names[0]], np.float32)
        wmax = np.max(np.stack([np.asarray(weight_colmax[n], np.float32) for n in names]), axis=0)
        g_alpha = group_alpha(names[0])
        s = smooth_factors(a, wmax, g_alpha)
        scale = act_scale_of(a, s)
        smoothed = a / s
        med = float(np.median(smoothed))
        ratio = float(np.max(smoothed)) / med if med > 0 else math.inf
        reasons: dict[str, list[str]] = {}
        for n in names:
            layer = int(n.split(".")[1])
            r = rule.reasons(n, hf.get(n, n), layer, spec.num_layers, ratio, group_error(names[0], g_alpha))
            if r:
                reasons[n] = r
        if reasons:  # the whole input group stays fp16
            for n in names:
                kept[n] = reasons.get(n) or [f"shares its input with {next(iter(reasons))}"]
            continue
        for n in names:
            linears[n] = LinearPlan(n, hf.get(n, n), s, scale, fold, names, a, g_alpha)
    h_alpha = group_alpha("lm_head") if not (rule.lm_head or spec.tie_word_embeddings) else 0.5
    head = rule.reasons("lm_head", hf.get("lm_head", "lm_head.weight"), None, spec.num_layers, 0.0,
                        group_error("lm_head", h_alpha))
    if not head and spec.tie_word_embeddings:  # W·s would change the embedding it shares
        head = ["tied to the embedding (smoothing its columns would change the embedding)"]
    if head:
        kept["lm_head"] = head
    else:
        a = np.asarray(amax["lm_head"], np.float32)
        s = smooth_factors(a, weight_colmax["lm_head"], h_alpha)
        fold = "final_norm.weight"  # the final norm feeds only the head
        linears["lm_head"] = LinearPlan("lm_head", hf.get("lm_head", "lm_head.weight"), s, act_scale_of(a, s),
                                        fold, ("lm_head",), a, h_alpha)
    return W8A8Plan(spec.arch, alpha, rule, linears, kept, str(calib), tokens, prompts,
                    grid if search else (), search, int(search_tokens) if search else 0)


# ------------------------------------------------------------------------------------------------
# host memory of the calibration (checked before any weight is loaded)

# The whole fp32 golden while it loads (a backend passed in, or a family without a layer stepper):
# every family's golden holds its fp32 weights once (the transformers-based Llama / Qwen goldens
# hand their state dict to the module with load_state_dict(assign=True); our ChatGLM modules copy
# tensor by tensor into their parameters). The default, layer-streamed calibration
# (`ascend_adapt.quant.calib.stream_act_stats`) holds one decoder layer's fp32 weights at a time.


@dataclass(frozen=True)
class CalibMemory:
    """Host bytes a W8A8 calibration needs (`calib_memory`).

    Attributes:
        golden: the fp32 weights held at once, 4 bytes × parameters: the whole golden, or, streamed,
            the largest stage (one decoder layer, or a quantized head); 0 when the backend is given.
        load_peak: the peak while those weights are built: the whole golden once (assigned, not
            copied); streamed, a stage's fp32 weights plus the source arrays they are made from.
        activations: one prompt's forward at batch 1 (the live tensors of one layer, plus the
            logits where the head runs).
        samples: the α-search samples, 4 × kept tokens × Σ in_features of the group leaders (all
            layers; streamed, one stage's).
        search_temp: the α search's temporaries for its largest group (`search_temp_bytes`).
        kept_tokens: tokens of the search samples.
        resident: streamed only, held through the whole run: the fp32 embedding matrix, every
            prompt's hidden state (twice while the final norm runs) and the per-prompt layer
            arguments (mask, rotary rows).
        streamed: the figure is the layer-streamed calibration's.
    """

    golden: int
    load_peak: int
    activations: int
    samples: int
    search_temp: int
    kept_tokens: int
    resident: int = 0
    streamed: bool = False

    @property
    def total(self) -> int:
        """The peak: what is held throughout, plus the larger of a load and a calibration run."""
        return self.resident + max(self.load_peak, self.golden + self.activations + self.samples + self.search_temp)


def search_temp_bytes(out_features: int, in_features: int, kept_tokens: int) -> int:
    """Bytes `search_alphas` holds for one input group beyond its samples (x) and the layer's own
    weights: the group's stacked W and one copy of W·s quantized and dequantized in place
    (2·out·in); the outputs: the reference x·Wᵀ (T·out), and on a held-out fold of ≤ T rows the
    int8 output minus the reference, then that difference in float64 while it is converted
    (3·T·out: 4·T·out in all); the quantized input chain (3·T·in). Float32, 4 bytes each."""
    o, i, t = int(out_features), int(in_features), int(kept_tokens)
    return 4 * (2 * o * i + 4 * t * o + 3 * t * i)


def calib_memory(spec, tokens: int, longest_prompt: int, search_tokens: int = SEARCH_TOKENS, *,
                 quantized_head: bool = False, golden_loaded: bool = False, streamed: bool = True) -> CalibMemory:
    """Host bytes of `plan_w8a8` on `spec` with `tokens` calibration tokens (pure arithmetic).

    Args:
        tokens: calibration tokens in all; longest_prompt: tokens of the longest prompt.
        search_tokens: the α search's budget (`collect_act_stats(max_kept_tokens=…)`).
        quantized_head: the head's input is kept too.
        golden_loaded: the fp32 golden is already resident (a backend passed in): not counted,
            and the calibration runs on it whole.
        streamed: the layer-streamed calibration (the default of `plan_w8a8`); False: the whole
            fp32 golden.
    """
    f32 = 4
    H, I, V, S = spec.hidden_size, spec.intermediate_size, spec.vocab_size, max(1, int(longest_prompt))
    streamed = streamed and not golden_loaded
    shapes = spec.canonical_shapes()
    layer_params = sum(math.prod(v) for k, v in shapes.items() if k.startswith("layers.0."))
    head_params = V * H if quantized_head and not spec.tie_word_embeddings else 0
    # one decoder layer at batch 1 under no_grad: residual, normed input, attention output, hook
    # temporary (4·S·H); q, k, v (S·(q + 2 kv)); scores and softmax (2·heads·S²); gate, up and
    # their product (3·S·I); and the logits with their numpy copy (2·S·V; streamed: the head runs
    # only when quantized, its output once)
    logits = (S * V if quantized_head else 0) if streamed else 2 * S * V
    act = f32 * (S * (4 * H + spec.q_dim + 2 * spec.kv_dim + 3 * I) + logits + 2 * spec.num_heads * S * S)
    stride = max(1, -(-int(tokens) // int(search_tokens)))
    kept = -(-int(tokens) // stride) if tokens > 0 else 0
    layer_in = H + spec.q_dim + H + I  # the leaders' in_features of one layer: q, o, gate/up, down
    leaders_in = (max(layer_in, H if quantized_head else 0) if streamed
                  else spec.num_layers * layer_in + (H if quantized_head else 0))
    samples = f32 * kept * leaders_in
    groups = [(spec.q_dim + 2 * spec.kv_dim, H), (H, spec.q_dim),
              ((2 if spec.ffn == "swiglu" else 1) * I, H), (H, I)] + ([(V, H)] if quantized_head else [])
    temp = max(search_temp_bytes(o, i, kept) for o, i in groups)
    if not streamed:
        golden = 0 if golden_loaded else f32 * spec.param_count()
        return CalibMemory(golden, golden, act, samples, temp, kept)
    # streamed: the largest stage's fp32 weights, and while it is built the source arrays too
    # (≤ 4 bytes a parameter: an fp32 checkpoint); held throughout: the fp32 embedding, the hidden
    # states (4·tokens·H, twice while the final norm runs) and each prompt's layer arguments: a
    # mask of ≤ S·S (Σ S_p² ≤ longest · tokens) and rotary rows (2·S·head_dim)
    golden = f32 * max(layer_params, head_params)
    resident = f32 * (V * H + 2 * int(tokens) * H + S * int(tokens) + 2 * int(tokens) * spec.head_dim)
    return CalibMemory(golden, 2 * golden, act, samples, temp, kept, resident, True)


def available_memory(meminfo: str | None, cgroup_limit: int | None = None,
                     cgroup_usage: int | None = None) -> int | None:
    """Bytes the host can still give: MemAvailable of `/proc/meminfo` text, capped by a cgroup
    memory limit minus its usage when one is set (None when neither is known)."""
    out = None
    for line in (meminfo or "").splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemAvailable":
            parts = rest.split()
            if parts and parts[0].isdigit():
                out = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
            break
    if cgroup_limit is not None and cgroup_limit < 2**60:  # v1 "unlimited" is ~2^63
        left = max(0, cgroup_limit - (cgroup_usage or 0))
        out = left if out is None else min(out, left)
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_memory() -> int | None:
    """`available_memory` of this host: /proc/meminfo and the process's cgroup (v2 memory.max /
    memory.current, or v1 memory.limit_in_bytes / memory.usage_in_bytes)."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        meminfo = None
    root = Path("/sys/fs/cgroup")
    rel = ""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
    except OSError:
        pass
    for d in ([root / rel] if rel else []) + [root]:
        limit = _read_int(d / "memory.max")  # "max" (no limit) reads as None
        if limit is not None:
            return available_memory(meminfo, limit, _read_int(d / "memory.current"))
    v1 = root / "memory"
    return available_memory(meminfo, _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes"))


def check_calib_memory(model: str, spec, need: CalibMemory, available: int | None) -> None:
    """Refuse a calibration that cannot fit the host, before any weight is loaded.

    Raises:
        UnsupportedError: `need.total` > `available` (naming the model and both figures).
    """
    from ascend_adapt.errors import UnsupportedError

    if available is None or need.total <= available:
        return
    def gb(n):
        return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
    what = "one layer's fp32 weights (streamed)" if need.streamed else "fp32 golden"
    parts = (f"{what} {gb(need.golden)} (peak {gb(need.load_peak)} while it loads), one prompt's "
             f"activations {gb(need.activations)}, α-search samples {gb(need.samples)} "
             f"({need.kept_tokens} tokens), search temporaries {gb(need.search_temp)}")
    if need.streamed:
        parts += f", embedding + hidden states {gb(need.resident)}"
    raise UnsupportedError(
        f"W8A8 calibration of '{model}' ({spec.arch}, {spec.param_count() / 1e9:.2f} B params) needs "
        f"{gb(need.total)} of host memory ({parts}); this host has {gb(available)} available",
        f"run the calibration on a host with ≥ {gb(need.total)} free (export --format msmodelslim / "
        "convert --quantize w8a8 there, then copy the result), or use --quantize w8a16 (weight-only "
        "int8, no calibration, weights streamed one tensor at a time)")


def plan_w8a8(model_dir, *, calib="builtin", alpha: float | str = "auto", rule: KeepRule | str | None = None,
              max_tokens: int = 4096, max_seq_len: int = 256, backend=None, grid=ALPHA_GRID,
              search_tokens: int = SEARCH_TOKENS, memory_available: float | None = None) -> W8A8Plan:
    """Calibrate a checkpoint on its fp32 torch golden and plan its W8A8 quantization.

    Before any weight is loaded, the host memory the run needs (`calib_memory`: from config.json
    and the tokenized calibration set) is compared with what the host can give, and a run that
    cannot fit is refused (`check_calib_memory`).

    Args:
        model_dir: HF checkpoint directory or llama.cpp .gguf file.
        calib: "builtin" or a calibration file (`ascend_adapt.quant.calib.load_calib_texts`).
        alpha: SmoothQuant migration strength in [0, 1] for every group, or "auto" (default): per
            input group the α of `grid` with the least int8 output error on the calibration
            inputs (`search_alphas`; the inputs of `search_tokens` tokens are kept for it).
        rule: a `KeepRule`, a rule string / JSON path (`KeepRule.parse`), or None (defaults).
        max_tokens: calibration tokens at most; max_seq_len: tokens per prompt at most.
        backend: an already built fp32 `TorchBackend` of this model, calibrated whole (else the
            checkpoint is calibrated one decoder layer at a time: `_plan_streamed`).
        grid, search_tokens: the α search ("auto" only).
        memory_available: host bytes available (None: read from this host, `host_memory`;
            `math.inf`: no check).

    Returns:
        the `W8A8Plan`.

    Raises:
        UnsupportedError: the calibration needs more host memory than is available.
    """
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    from .calib import collect_act_stats, load_calib_texts, tokenize_calib, torch_linear_modules

    alpha = check_alpha(alpha)
    rule = KeepRule.parse(rule) if rule is not None else KeepRule()
    texts = load_calib_texts(calib)
    # a fixed α is measured too (a grid of one), so the max_error rule applies to every plan
    grid = tuple(float(check_alpha(a)) for a in grid) if alpha == "auto" else (alpha,)
    if not grid or "auto" in grid:
        raise ConfigError(f"W8A8 α search: grid {grid!r} must be numbers in [0, 1]", "e.g. 0, 0.1, …, 1")
    src = None
    if backend is None:
        from ascend_adapt.checkpoint.gguf_io import resolve_source
        from ascend_adapt.estimate.core import spec_for

        src = resolve_source(model_dir)
        spec = spec_for(src)[0]  # config.json only: no weight is read before the memory check
    else:
        spec = backend.spec
    tok = load_tokenizer(model_dir)
    token_lists = tokenize_calib(tok, texts, max_tokens, max_seq_len, suffix=spec.position_scheme.prompt_suffix(spec))
    head = not rule.lm_head and not spec.tie_word_embeddings  # a quantized head is measured too
    stepper = None
    if backend is None:  # layer-streamed unless the family's golden has no layer stepper
        from ascend_adapt.backends.torch.session import reference_module

        golden = reference_module(spec.arch)
        stepper = getattr(golden, "calib_stages", None)
        if stepper is not None and hasattr(golden, "calib_imports"):
            # the stepper's library code (transformers' modelling modules: 0.13 GB on a Llama) is
            # imported now, reading no weight, so the host's free memory read below has it out
            golden.calib_imports(spec)
    need = calib_memory(spec, sum(map(len, token_lists)), max(map(len, token_lists), default=1), search_tokens,
                        quantized_head=head, golden_loaded=backend is not None, streamed=stepper is not None)
    check_calib_memory(str(model_dir), spec, need, host_memory() if memory_available is None else memory_available)
    if stepper is not None:
        return _plan_streamed(stepper, src, token_lists, alpha=alpha, rule=rule, calib=calib, grid=grid,
                              search_tokens=search_tokens, head=head)
    if backend is None:
        from ascend_adapt.backends.torch.session import TorchBackend

        backend = TorchBackend(src, dtype="float32")
        spec = backend.spec
    leaders = [names[0] for names, _ in _groups(spec)] + (["lm_head"] if head else [])
    stats = collect_act_stats(backend, token_lists, keep_inputs=leaders, max_kept_tokens=search_tokens)
    mods = torch_linear_modules(backend)
    colmax = {n: m.weight.detach().abs().amax(dim=0).float().numpy() for n, m in mods.items()}
    weights = {n: m.weight.detach().float().numpy() for n, m in mods.items()}
    # two folds by prompt parity: each half's statistic is judged on the other half
    search = search_alphas(spec, stats.inputs, weights, stats.input_prompts % 2, grid, include_head=head)
    stats.inputs = None
    return plan_from_stats(spec, stats.amax, colmax, alpha=alpha, rule=rule, calib=str(calib),
                           tokens=stats.tokens, prompts=stats.prompts, search=search, grid=grid,
                           search_tokens=stats.kept_tokens)


def _plan_streamed(stepper, src, token_lists, *, alpha, rule, calib, grid, search_tokens, head) -> W8A8Plan:
    """`plan_w8a8` one decoder layer at a time (`ascend_adapt.quant.calib.stream_act_stats`): each
    layer's weight maxima and α search are taken while that layer is built, then it is freed."""
    from .calib import CanonicalSource, stream_act_stats

    source = CanonicalSource(src)
    spec = source.spec
    leaders = [names[0] for names, _ in _groups(spec)] + (["lm_head"] if head else [])
    colmax: dict[str, np.ndarray] = {}
    search: dict[str, np.ndarray] = {}

    def on_stage(st):
        if st.index is None and not head:
            return  # the head stays fp16: only its input's amax was wanted
        colmax.update({n: m.weight.detach().abs().amax(dim=0).float().numpy() for n, m in st.linears.items()})
        weights = {n: m.weight.detach().float().numpy() for n, m in st.linears.items()}
        groups = ([("lm_head",)] if st.index is None else
                  [names for names, _ in _groups(spec) if names[0].startswith(f"layers.{st.index}.")])
        # two folds by prompt parity: each half's statistic is judged on the other half
        search.update(search_alphas(spec, st.inputs, weights, st.input_prompts % 2, grid, groups=groups))

    stats = stream_act_stats(stepper(spec, source), spec, token_lists, keep_inputs=leaders,
                             max_kept_tokens=search_tokens, head=head, on_stage=on_stage)
    return plan_from_stats(spec, stats.amax, colmax, alpha=alpha, rule=rule, calib=str(calib),
                           tokens=stats.tokens, prompts=stats.prompts, search=search, grid=grid,
                           search_tokens=stats.kept_tokens)


def apply_smoothing(canonical: dict[str, np.ndarray], plan: W8A8Plan) -> dict[str, np.ndarray]:
    """Canonical weights with the plan's smoothing applied (float32 copies of what changes).

    Every planned Linear's weight columns are multiplied by its `smooth`; each fold target (norm
    weight, and the norm's bias where it has one) is divided by it. Linears with `fold=None`
    expect the division of x in the graph (an explicit Mul by 1/smooth).
    """
    out = dict(canonical)
    for lp in plan.linears.values():
        out[lp.weight_name] = np.asarray(canonical[lp.weight_name], np.float32) * lp.smooth[None, :]
    for norm_w, s in plan.folds().items():
        out[norm_w] = np.asarray(canonical[norm_w], np.float32) / s
        bias = norm_w[: -len(".weight")] + ".bias"
        if bias in canonical:
            out[bias] = np.asarray(canonical[bias], np.float32) / s
    return out
