"""Property-based fuzz tests of the parsers that read untrusted files: config.json and safetensors headers.

The property everywhere: a parser either succeeds or raises an `AscendAdaptError` (which the CLI
prints as one clear error): never another exception, never a memory blow-up. For safetensors
headers there is a stronger one: our reader refuses exactly when the safetensors library (the
format's reference implementation) refuses, except for the format's dtypes we cannot represent.

Every test is deterministic (`derandomize=True`: the same examples on every machine) and bounded
(500 examples each); the whole file takes about 20 s on 2 cores.
"""

from __future__ import annotations

import json
import resource
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ascend_adapt.checkpoint.config import ConfigDict, parse_strict_json
from ascend_adapt.checkpoint.safetensors_io import parse_safetensors_header
from ascend_adapt.errors import AscendAdaptError
from ascend_adapt.inspect_model import inspect_checkpoint
from ascend_adapt.model_zoo import adapter_for_config
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, tiny_config

FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Peak RSS growth allowed over a whole 500-example run. A config value that sized an allocation
# (2**40 layers, hidden 2**40) would need far more than this; every legitimate example stays in
# kilobytes, and the limit leaves room for the interpreter's own caches (imports, hypothesis).
_MAX_RSS_GROWTH_KIB = 256 * 1024

ARCHS = ("llama", "chatglm")


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# ---- (a) config.json mutations -------------------------------------------------------------------

_values = st.one_of(
    st.integers(min_value=-3, max_value=300),
    st.sampled_from([0, 1, 2, 3, 4, 64, 2 ** 17, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64, 10 ** 30, -1, -2 ** 40]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([64.0, 1e-5, 0.0, -0.0, 1e308, float("inf"), float("-inf"), float("nan")]),
    st.text(max_size=8),
    st.sampled_from(["64", "silu", "gelu", "float16", "LlamaForCausalLM", "ChatGLMModel", "llama", "chatglm"]),
    st.lists(st.integers(min_value=-2, max_value=2 ** 40), max_size=3),
    st.lists(st.text(max_size=4), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.none(),
)


@st.composite
def mutated_configs(draw):
    """(arch, config) from a real tiny config with 1-4 mutations: replace, delete or add keys."""
    arch = draw(st.sampled_from(ARCHS))
    cfg = dict(tiny_config(arch))
    keys = sorted(cfg)
    extra_keys = ["head_dim", "num_key_value_heads", "rope_scaling", "rope_parameters", "attention_bias",
                  "quantization_bit", "pre_seq_len", "dim", "n_layers", "n_heads", "multiple_of",
                  "ffn_dim_multiplier", "dtype", "max_position_embeddings", "seq_length", "x"]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if op == "delete" and cfg:
            cfg.pop(draw(st.sampled_from(sorted(cfg))), None)
        else:
            key = draw(st.sampled_from(keys if op == "replace" else extra_keys))
            cfg[key] = draw(_values)
    return arch, cfg


def _config_json(cfg: dict) -> str:
    # allow_nan writes Python's NaN / Infinity literals: exactly what the strict reader must refuse
    return json.dumps(cfg, allow_nan=True)


@FUZZ
@given(mutated_configs())
def test_config_validator_succeeds_or_raises_a_clear_error(case):
    _, cfg = case
    before = _peak_rss_kib()
    try:
        parsed = ConfigDict(parse_strict_json(_config_json(cfg)), "fuzz/config.json")
        spec = adapter_for_config(parsed).spec_from_config(parsed)
        spec.canonical_shapes()
        spec.param_count()
    except ValueError:
        pass  # strict JSON refused NaN / Infinity: the file readers turn this into a ConfigError
    except AscendAdaptError as exc:
        assert exc.message
    assert _peak_rss_kib() - before < _MAX_RSS_GROWTH_KIB


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return {arch: make_tiny_checkpoint(root / arch, arch) for arch in ARCHS}


def test_inspect_on_mutated_configs(tiny_dirs):
    """Mutated config.json beside real weights: inspect reports or refuses, never a traceback."""
    before = _peak_rss_kib()
    outcomes = {"ok": 0, "problems": 0}

    @FUZZ
    @given(mutated_configs())
    def run(case):
        arch, cfg = case
        d = tiny_dirs[arch]
        (d / "config.json").write_text(_config_json(cfg))
        try:
            r = inspect_checkpoint(d)
        except AscendAdaptError:  # pragma: no cover - inspect reports config problems instead
            raise AssertionError("inspect should report a bad config, not stop") from None
        outcomes["problems" if r.problems else "ok"] += 1
        assert r.num_tensors > 0
        if r.problems:
            assert r.failure() is not None

    try:
        run()
    finally:
        (tiny_dirs["llama"] / "config.json").write_text(json.dumps(tiny_config("llama")))
    assert outcomes["problems"] > 100 and outcomes["ok"] > 0  # the mutations reach both outcomes
    assert _peak_rss_kib() - before < _MAX_RSS_GROWTH_KIB


# ---- (b) safetensors headers ---------------------------------------------------------------------

_DTYPES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "I8", "f32", "F12", "", "C64", "F8_E8M0"]
_FORMAT_ONLY = {"C64", "F8_E8M0"}  # valid safetensors, not readable by ascend-adapt
_ITEM = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1, "F64": 8, "I8": 1, "C64": 8, "F8_E8M0": 1}


@st.composite
def base_headers(draw):
    """A valid header of 0-4 small tensors laid out contiguously (in any header order)."""
    n = draw(st.integers(min_value=0, max_value=4))
    header, off = {}, 0
    for i in range(n):
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL"]))
        shape = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=3))
        nbytes = _ITEM[dtype]
        for d in shape:
            nbytes *= d
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    items = list(header.items())
    order = draw(st.permutations(items))
    out = dict(order)
    if draw(st.booleans()):
        out["__metadata__"] = {"format": "pt"}
    return out, off


_odd = st.one_of(st.integers(min_value=-2 ** 65, max_value=2 ** 65), st.booleans(), st.none(),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3),
                 st.lists(st.integers(min_value=-2, max_value=9), max_size=3), st.just({}))


@st.composite
def mutated_header_files(draw):
    """Whole safetensors files: a valid header with JSON-level mutations, then raw-byte mutations."""
    header, data_len = draw(base_headers())
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        op = draw(st.sampled_from(["dtype", "shape", "offsets", "overlap", "drop_field", "add_field",
                                   "metadata", "entry", "data_len"]))
        name = draw(st.sampled_from(names)) if names else None
        if name is not None and not isinstance(header[name], dict):
            name = None  # an earlier "entry" mutation replaced it
        if op == "dtype" and name:
            header[name]["dtype"] = draw(st.one_of(st.sampled_from(_DTYPES), _odd))
        elif op == "shape" and name:
            shape = header[name].get("shape")
            if isinstance(shape, list) and shape and draw(st.booleans()):
                shape = list(shape)
                shape[draw(st.integers(0, len(shape) - 1))] = draw(_odd)
            else:
                shape = draw(st.one_of(_odd, st.lists(st.integers(min_value=-1, max_value=2 ** 64), max_size=4)))
            header[name]["shape"] = shape
        elif op == "offsets" and name and isinstance(header[name].get("data_offsets"), list) \
                and len(header[name]["data_offsets"]) == 2 and all(type(o) is int for o in header[name]["data_offsets"]):
            b, e = header[name]["data_offsets"]
            header[name]["data_offsets"] = draw(st.sampled_from(
                [[b + 1, e + 1], [b, e + 4], [e, b], [b - 1, e], [b, e, e], [b], "x", [float(b), e], [b, 2 ** 64]]))
        elif op == "overlap" and len(names) >= 2:
            a, c = draw(st.permutations(names))[:2]
            if isinstance(header[a], dict) and isinstance(header[c], dict) and "data_offsets" in header[a]:
                header[c]["data_offsets"] = header[a]["data_offsets"]
        elif op == "drop_field" and name:
            header[name].pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif op == "add_field" and name:
            header[name][draw(st.sampled_from(["x", "dtype2", "offsets"]))] = draw(_odd)
        elif op == "metadata":
            header["__metadata__"] = draw(st.one_of(_odd, st.dictionaries(st.text(max_size=3), _odd, max_size=2),
                                                    st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                                    max_size=2)))
        elif op == "entry" and name:
            header[name] = draw(_odd)
        elif op == "data_len":
            data_len = max(0, data_len + draw(st.integers(min_value=-8, max_value=8)))
    blob = json.dumps(header, allow_nan=True).encode()
    blob += b" " * draw(st.integers(min_value=0, max_value=7))
    n = len(blob)
    raw = draw(st.sampled_from(["none", "none", "none", "truncate", "length", "flip", "append"]))
    if raw == "length":
        n = draw(st.sampled_from([0, 1, n - 1, n + 1, n + data_len + 1, 2 ** 27, 100_000_001, 2 ** 63, 2 ** 64 - 1]))
        n = max(0, n)
    content = struct.pack("<Q", n) + blob + b"\0" * data_len
    if raw == "truncate":
        content = content[:draw(st.integers(min_value=0, max_value=len(content)))]
    elif raw == "flip" and blob:
        i = 8 + draw(st.integers(min_value=0, max_value=len(blob) - 1))
        content = content[:i] + bytes([draw(st.integers(0, 255))]) + content[i + 1:]
    elif raw == "append":
        content += b"\0" * draw(st.integers(min_value=1, max_value=16))
    return content


def _ours_accepts(content: bytes) -> bool:
    try:
        parse_safetensors_header(content, len(content), "fuzz.safetensors")
        return True
    except AscendAdaptError as exc:
        assert "fuzz.safetensors" in exc.message and exc.hint
        return False


def _uses_format_only_dtype(content: bytes) -> bool:
    return any(f'"{d}"'.encode() in content for d in _FORMAT_ONLY)


def test_header_parser_matches_the_safetensors_library():
    from safetensors import deserialize

    outcomes = {True: 0, False: 0}

    @FUZZ
    @given(mutated_header_files())
    def run(content):
        ours = _ours_accepts(content)
        try:
            deserialize(content)
            theirs = True
        except Exception:  # SafetensorError: the library refuses
            theirs = False
        if _uses_format_only_dtype(content):
            assert not ours or theirs  # we may refuse a dtype we cannot represent, never accept a bad file
        else:
            assert ours == theirs
        outcomes[ours] += 1

    run()
    assert outcomes[True] > 50 and outcomes[False] > 50  # both sides of the boundary are exercised


def test_inspect_on_mutated_headers(tiny_dirs, tmp_path):
    """Mutated model.safetensors beside a real config: inspect succeeds or raises a clear error."""
    d = tmp_path / "h"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_config("llama")))
    before = _peak_rss_kib()
    outcomes = {"ok": 0, "refused": 0}

    @FUZZ
    @given(mutated_header_files())
    def run(content):
        (d / "model.safetensors").write_bytes(content)
        try:
            inspect_checkpoint(d)
            outcomes["ok"] += 1
        except AscendAdaptError as exc:
            assert exc.message
            outcomes["refused"] += 1

    run()
    assert outcomes["ok"] > 50 and outcomes["refused"] > 50
    assert _peak_rss_kib() - before < _MAX_RSS_GROWTH_KIB
