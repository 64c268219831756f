"""One validator for model configs (config.json, Meta params.json).

Every reader of a config goes through here:

- `load_config_json(path)` parses strict JSON: UTF-8, a JSON object, and no `NaN` / `Infinity` /
  `-Infinity` literals (Python's `json` accepts them; JSON does not) nor numbers that overflow a
  float (`1e999`). It returns a `ConfigDict`, a dict that remembers its file for messages.
- `ConfigFields` reads typed fields with bounds: an int is an int (not a bool, a float, a string
  or a list), positive unless said otherwise and below a sane upper bound; a float is a finite
  number; a bool is a JSON boolean. Each adapter's `spec_from_config` is a small schema written
  with these readers (`model_zoo/llama/adapter.py`, `model_zoo/chatglm/adapter.py`), and
  `ModelSpec` re-checks its sizes against the same bounds.

Errors are `ConfigError`s naming the file, the key, the bad value and what is expected. Nothing
here allocates memory proportional to a config value, and the bounds are what keeps later code
(shape tables, rotary tables, the estimator) from doing so.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

# ---- bounds -----------------------------------------------------------------------------------
# Upper bounds derived from the largest published open models, with a wide margin, so that a real
# config never hits them while a mutated one (2**40) is refused before anything is sized by it.
#
# hidden size: the largest published decoder widths are 16384 (Llama-3.1-405B) and 18432
# (PaLM-540B); 2**17 = 131072 is 7x the largest.
MAX_HIDDEN = 2 ** 17
# layers: the deepest published decoders have 118-126 layers (PaLM, Llama-3.1-405B); 2**10 = 8x.
MAX_LAYERS = 2 ** 10
# attention heads: the most published is 128 (Llama-3.1-405B); 2**12 = 32x, and never more than
# the hidden size (checked where both are known: head_dim >= 1).
MAX_HEADS = 2 ** 12
# head_dim: the widest published heads are 256 (Gemma); 2**12 = 16x.
MAX_HEAD_DIM = 2 ** 12
# FFN inner size: the widest published is 73728 (PaLM-540B; Llama-3.1-405B 53248); 2**19 = 7x.
MAX_INTERMEDIATE = 2 ** 19
# vocabulary: the largest published are ~256k (Gemma 256000, BLOOM 250880, 262144 multilingual
# tokenizers); ChatGLM-6B has 130528. 2**22 = 4194304 is 16x the largest.
MAX_VOCAB = 2 ** 22
# context (max_position_embeddings / seq_length): the longest published open config is ~1M
# (Qwen2.5-1M: 1010000); Llama-2 4096, ChatGLM-6B 2048. 2**20 = 1048576. The rotary tables of the
# references hold this many rows, so the bound also caps their memory (2**20 x 128 x 4 B = 512 MiB).
MAX_POSITIONS = 2 ** 20
# token ids are int32 on the device graphs (`input_ids` int32): 0 <= id < 2**31.
MAX_TOKEN_ID = 2 ** 31 - 1
# Meta params.json `multiple_of` (256 in Llama-2, 1024 in Llama-3-70B): 2**16 is 64x the largest.
MAX_MULTIPLE_OF = 2 ** 16
# Meta params.json `ffn_dim_multiplier` (1.3 in Llama-2-70B, 1.5 in Llama-3-405B): a factor
# above 64 would give an FFN 170x the hidden size, which no model has.
MAX_FFN_MULTIPLIER = 64.0

_MAX_SHOWN_CHARS = 80
# dtype names a config's torch_dtype / dtype may carry (transformers' names)
CONFIG_DTYPES = ("float32", "float16", "bfloat16", "float64", "float", "half", "double",
                 "int8", "uint8", "float8_e4m3fn", "float8_e5m2")


class ConfigDict(dict):
    """A config dict that remembers where it came from (`source`, for error messages)."""

    source: str = "config.json"

    def __init__(self, data: Mapping | None = None, source: str | None = None):
        super().__init__(data or {})
        self.source = str(source) if source is not None else getattr(data, "source", "config.json")


def config_source(config: Mapping, default: str = "config.json") -> str:
    """The file a config came from (`ConfigDict.source`), or `default`."""
    return str(getattr(config, "source", None) or default)


def shown(value: Any) -> str:
    """A short printable form of a config value (long lists / strings are cut)."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[:_MAX_SHOWN_CHARS - 3] + "..."
    return text


def _refuse_constant(name: str):
    raise ValueError(f"the literal {name} is not JSON: numbers must be finite; write a number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} overflows a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > 100:  # no config value has 100 digits; int() would refuse 4300 with a confusing message
        raise ValueError(f"the integer {text[:20]}... has {len(text)} digits")
    return int(text)


def parse_strict_json(text: str):
    """`json.loads` without NaN / Infinity literals or overflowing numbers.

    Raises:
        ValueError: invalid JSON (including the cases above); RecursionError is mapped to it.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("nesting is too deep") from None


def load_config_json(path, what: str | None = None) -> ConfigDict:
    """Read a config file as strict JSON; the result remembers its path.

    Args:
        path: config.json / params.json.
        what: the file's role for messages (default: its name).

    Raises:
        ConfigError: missing, unreadable, not UTF-8, not strict JSON or not a JSON object.
    """
    path = Path(path)
    what = what or path.name
    fix = f"use the {what} that came with the checkpoint (strict JSON: no NaN / Infinity)"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found", fix) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {exc.start})", fix) from None
    try:
        data = parse_strict_json(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})", fix) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object, got {type(data).__name__}", fix)
    return ConfigDict(data, str(path))


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class ConfigFields:
    """Typed, bounded reads of one config.

    Args:
        config: the config dict (a `ConfigDict` names its file in messages).
        aliases: key -> the config keys it may be stored under, first match wins.
        source: the file name for messages (default: `config.source` or "config.json").

    Every reader takes `default`: omitted (`...`) means the key is required; a key whose value is
    null counts as absent, as transformers reads it.
    """

    def __init__(self, config: Mapping, aliases: Mapping[str, Sequence[str]] | None = None,
                 source: str | None = None):
        self.config = config
        self.aliases = aliases or {}
        self.source = source or config_source(config)

    # ---- plumbing ----------------------------------------------------------------------------
    def keys_for(self, key: str) -> tuple[str, ...]:
        return tuple(self.aliases.get(key, (key,)))

    def find(self, key: str) -> tuple[str, Any]:
        """(the config key found, its value), or (the first alias, None) when absent or null."""
        names = self.keys_for(key)
        for k in names:
            if k in self.config and self.config[k] is not None:
                return k, self.config[k]
        return names[0], None

    def error(self, key: str, value: Any, expected: str, hint: str | None = None) -> ConfigError:
        """The ConfigError for a bad value: file, key, value and what was expected."""
        return ConfigError(f"{self.source}: key '{key}' is {shown(value)}, expected {expected}",
                           hint or f"use the {Path(self.source).name} that came with the checkpoint")

    def _missing(self, key: str, default):
        if default is ...:
            names = self.keys_for(key)
            raise ConfigError(f"{self.source}: missing key '{names[0]}' (looked for {', '.join(names)})",
                              f"use the {Path(self.source).name} that came with the checkpoint")
        return default

    # ---- readers -----------------------------------------------------------------------------
    def int(self, key: str, default=..., *, lo: int = 1, hi: int) -> int:
        """An integer in [lo, hi] (not a bool, a float, a string or a list)."""
        k, v = self.find(key)
        if v is None:
            return self._missing(key, default)
        if not _is_int(v):
            raise self.error(k, v, f"an integer in [{lo}, {hi}]")
        if not lo <= v <= hi:
            raise self.error(k, v, f"an integer in [{lo}, {hi}]")
        return int(v)

    def float(self, key: str, default=..., *, lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> float:
        """A finite number in [lo, hi] (`lo_open`: strictly above lo); ints are accepted."""
        k, v = self.find(key)
        if v is None:
            return self._missing(key, default)
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        want = f"a finite number in {'(' if lo_open else '['}{lo_s}, {hi_s}]"
        if not _is_real(v):
            raise self.error(k, v, want)
        x = float(v)
        if not math.isfinite(x) or (lo is not None and (x <= lo if lo_open else x < lo)) or (hi is not None and x > hi):
            raise self.error(k, v, want)
        return x

    def bool(self, key: str, default=...) -> bool:
        """A JSON boolean (the string "false" or 0 is refused: it would silently mean True / False)."""
        k, v = self.find(key)
        if v is None:
            return self._missing(key, default)
        if not isinstance(v, bool):
            raise self.error(k, v, "true or false")
        return v

    def str(self, key: str, default=..., *, choices: Sequence[str] | None = None) -> str:
        """A string (one of `choices` when given)."""
        k, v = self.find(key)
        if v is None:
            return self._missing(key, default)
        if not isinstance(v, str):
            raise self.error(k, v, "a string" + (f", one of {', '.join(choices)}" if choices else ""))
        if choices is not None and v not in choices:
            raise self.error(k, v, f"one of {', '.join(choices)}")
        return v

    def mapping(self, key: str) -> dict:
        """A JSON object, or {} when absent / null."""
        k, v = self.find(key)
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise self.error(k, v, "a JSON object or null")
        return dict(v)

    def token_id(self, key: str, default: int | None = None) -> int | None:
        """A token id: 0 <= id <= 2**31 - 1, or null. -1 (written by some old Llama conversions for
        "no pad token") means none."""
        k, v = self.find(key)
        if v is None:
            return default
        if _is_int(v) and v == -1:
            return None
        if not _is_int(v) or not 0 <= v <= MAX_TOKEN_ID:
            raise self.error(k, v, f"a token id in [0, {MAX_TOKEN_ID}] or null")
        return int(v)

    def token_ids(self, key: str, default=None):
        """A token id or a non-empty list of them (eos_token_id may be a list), or null."""
        k, v = self.find(key)
        if v is None:
            return default
        if isinstance(v, (list, tuple)):
            if not v or not all(_is_int(e) and 0 <= e <= MAX_TOKEN_ID for e in v):
                raise self.error(k, v, f"a token id in [0, {MAX_TOKEN_ID}], a non-empty list of them, or null")
            return tuple(int(e) for e in v)
        return self.token_id(key, default)

    def dtype(self, keys: Sequence[str], default: str) -> str:
        """The checkpoint's dtype name (`torch_dtype`, or transformers 5's `dtype`)."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.str(key, choices=CONFIG_DTYPES)
        return default

    # ---- cross-field checks ------------------------------------------------------------------
    def divisible(self, key_a: str, a: int, key_b: str, b: int, hint: str | None = None) -> None:
        """Refuse `a % b != 0`, naming both keys as found in the config."""
        if a % b:
            ka, kb = self.find(key_a)[0], self.find(key_b)[0]
            raise ConfigError(
                f"{self.source}: {ka} = {a} is not a multiple of {kb} = {b}",
                hint or f"use the {Path(self.source).name} that came with the checkpoint")


def check_identity_keys(config: Mapping, source: str | None = None) -> tuple[list[str], str | None]:
    """Validate the keys that pick an adapter: `architectures` (a list of strings) and `model_type`.

    Returns:
        (architectures, model_type), both possibly empty / None.

    Raises:
        ConfigError: `architectures` is not a list of strings or `model_type` is not a string.
    """
    f = ConfigFields(config, source=source)
    archs = config.get("architectures")
    if archs is None:
        archs = []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise f.error("architectures", archs, 'a list of class names such as ["LlamaForCausalLM"]')
    mt = config.get("model_type")
    if mt is not None and not isinstance(mt, str):
        raise f.error("model_type", mt, 'a string such as "llama"')
    return list(archs), mt


def check_head_dim(f: ConfigFields, head_dim: int, key: str = "head_dim", even: int = 2) -> int:
    """Refuse a head_dim outside [1, MAX_HEAD_DIM] or not a multiple of `even` (rotary pairs)."""
    if not 1 <= head_dim <= MAX_HEAD_DIM or head_dim % even:
        raise f.error(key, head_dim,
                      f"a head dimension in [1, {MAX_HEAD_DIM}] divisible by {even} (rotary rotates pairs)",
                      "check hidden_size, num_attention_heads and head_dim")
    return head_dim
