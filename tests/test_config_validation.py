"""One validator for configs, a strict safetensors header reader, and an inspect that tells the truth.

Regression tests for the tracebacks found by mutating config.json / safetensors headers given to
`inspect`, and for the header cases the safetensors library refuses (the library is the oracle).
"""

import json
import struct

import pytest

from ascend_adapt.checkpoint import open_checkpoint, read_safetensors_header
from ascend_adapt.checkpoint.config import MAX_HIDDEN, MAX_LAYERS, ConfigFields, load_config_json
from ascend_adapt.errors import AscendAdaptError, CheckpointError, ConfigError
from ascend_adapt.inspect_model import inspect_checkpoint
from ascend_adapt.model_zoo import ADAPTERS
from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfgval")
    return {arch: make_tiny_checkpoint(root / arch, arch) for arch in ("llama", "chatglm")}


def _copy_with_config(src, dst, text):
    import shutil

    shutil.copytree(src, dst)
    (dst / "config.json").write_text(text)
    return dst


def _config_text(arch, key, value_json):
    """The tiny config.json with `key` set to the raw JSON text `value_json`."""
    cfg = dict(tiny_config(arch))
    cfg[key] = "@@VALUE@@"
    return json.dumps(cfg).replace('"@@VALUE@@"', value_json)


# ---- the listed tracebacks: each is now a ConfigError naming the file, the key and the value ------

@pytest.mark.parametrize("key, value, expect", [
    ("hidden_size", "[64]", r"key 'hidden_size' is \[64\], expected an integer"),  # was int() of a list
    ("hidden_size", "-64", r"key 'hidden_size' is -64, expected an integer in \[1, "),  # negative size
    ("num_hidden_layers", str(2 ** 40), r"key 'num_hidden_layers' is 1099511627776"),  # was a memory blow-up
    ("hidden_size", str(2 ** 40), r"key 'hidden_size' is 1099511627776"),
    ("hidden_size", "true", r"key 'hidden_size' is true"),
    ("hidden_size", "64.0", r"key 'hidden_size' is 64.0"),
    ("num_attention_heads", "0", r"key 'num_attention_heads' is 0"),  # was ZeroDivisionError
    ("num_key_value_heads", "3", r"num_attention_heads = 4 is not a multiple of num_key_value_heads = 3"),
    ("rms_norm_eps", '"1e-5"', r"key 'rms_norm_eps' is \"1e-5\", expected a finite number"),
    ("tie_word_embeddings", '"false"', r"key 'tie_word_embeddings' is \"false\", expected true or false"),
    ("torch_dtype", '["float32"]', r"key 'torch_dtype' is \[\"float32\"\]"),  # a dtype that is a list
    ("eos_token_id", "[2, [3]]", r"key 'eos_token_id' is \[2, \[3\]\]"),
    ("architectures", '"LlamaForCausalLM"', r"key 'architectures' is \"LlamaForCausalLM\""),
    ("architectures", "[[1]]", r"key 'architectures' is \[\[1\]\]"),  # was unhashable list
    ("model_type", "[]", r"key 'model_type' is \[\]"),
])
def test_bad_llama_values_are_config_errors(tiny, tmp_path, key, value, expect):
    d = _copy_with_config(tiny["llama"], tmp_path / "m", _config_text("llama", key, value))
    cfg = load_config_json(d / "config.json")
    with pytest.raises(ConfigError, match=expect) as e:
        from ascend_adapt.model_zoo import adapter_for_config

        adapter_for_config(cfg).spec_from_config(cfg)
    assert str(d / "config.json") in str(e.value) and e.value.hint
    r = inspect_checkpoint(d)  # inspect still reports what it read, and the problem
    assert r.num_tensors == 21 and not r.ok
    assert any(key in p for p in r.problems)


@pytest.mark.parametrize("key, value, expect", [
    ("hidden_size", "66", r"hidden_size = 66 is not a multiple of num_attention_heads = 4"),
    ("hidden_size", "72", r"key 'hidden_size' is 18, expected a head dimension .* divisible by 4"),
    ("inner_hidden_size", str(2 ** 30), r"key 'inner_hidden_size' is 1073741824"),
    ("vocab_size", "{}", r"key 'vocab_size' is \{\}"),
    ("quantization_bit", '"4"', r"key 'quantization_bit' is \"4\""),
    ("position_encoding_2d", "1", r"key 'position_encoding_2d' is 1, expected true or false"),
    ("max_sequence_length", str(2 ** 40), r"key 'max_sequence_length' is 1099511627776"),
    ("pad_token_id", "-5", r"key 'pad_token_id' is -5, expected a token id"),
])
def test_bad_chatglm_values_are_config_errors(key, value, expect):
    cfg = json.loads(_config_text("chatglm", key, value))
    with pytest.raises(ConfigError, match=expect):
        ADAPTERS.get("chatglm").spec_from_config(cfg)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_non_finite_json_numbers_are_refused(tiny, tmp_path, literal):
    # Python's json accepts Infinity / NaN and turns 1e999 into inf; JSON has none of them
    d = _copy_with_config(tiny["llama"], tmp_path / "m", _config_text("llama", "rms_norm_eps", literal))
    with pytest.raises(ConfigError, match=r"config.json: not valid JSON .*(not JSON: numbers must be finite|overflows)"):
        load_config_json(d / "config.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        open_checkpoint(d)
    r = inspect_checkpoint(d)
    assert r.num_tensors == 21 and r.problems and "not valid JSON" in r.problems[0]


def test_huge_values_allocate_nothing(tmp_path):
    """2**40 layers once built a 2**40-entry shape table: now refused before anything is sized."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for key in ("num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size", "max_position_embeddings"):
        with pytest.raises(ConfigError, match=key):
            ADAPTERS.get("llama").spec_from_config(dict(tiny_config("llama"), **{key: 2 ** 40}))
    # ru_maxrss is in KiB on Linux; a 2**40-sized table would take far more than 64 MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_bounds_admit_the_largest_real_configs():
    """The bounds are above every published model (Llama-3.1-405B: 16384 wide, 126 layers)."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16384,
           "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128,
           "num_key_value_heads": 8, "hidden_act": "silu", "max_position_embeddings": 131072,
           "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "vocab_size": 128256, "bos_token_id": 1,
           "eos_token_id": 2, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    spec = ADAPTERS.get("llama").spec_from_config(cfg)
    assert spec.hidden_size <= MAX_HIDDEN and spec.num_layers <= MAX_LAYERS
    assert 4.0e11 < spec.param_count() < 4.1e11


def test_config_fields_names_file_key_value():
    from ascend_adapt.checkpoint.config import ConfigDict

    f = ConfigFields(ConfigDict({"n": [1, 2]}, "/x/config.json"))
    with pytest.raises(ConfigError) as e:
        f.int("n", hi=10)
    assert str(e.value).startswith("/x/config.json: key 'n' is [1, 2], expected an integer in [1, 10]")
    long = ConfigFields({"s": "x" * 10_000})
    with pytest.raises(ConfigError) as e:
        long.int("s", hi=10)
    assert len(e.value.message) < 200  # the value is cut, not echoed whole


def test_estimate_reads_config_through_the_validator(tmp_path):
    from ascend_adapt.estimate import estimate

    p = tmp_path / "config.json"
    p.write_text(_config_text("llama", "num_hidden_layers", "NaN"))
    with pytest.raises(ConfigError, match="NaN"):
        estimate(p)
    p.write_text(_config_text("llama", "num_hidden_layers", str(2 ** 40)))
    with pytest.raises(ConfigError, match=f"{p}: key 'num_hidden_layers'"):
        estimate(p)


def test_index_with_a_non_string_shard_is_refused(tiny, tmp_path):
    import shutil

    d = tmp_path / "s"
    shutil.copytree(tiny["llama"], d)
    names = list(read_safetensors_header(d / "model.safetensors")[0])
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {names[0]: ["model.safetensors"]}}))
    with pytest.raises(CheckpointError, match="expected the file name of a shard"):
        open_checkpoint(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {names[0]: "../model.safetensors"}}))
    with pytest.raises(CheckpointError, match="expected the file name of a shard"):
        open_checkpoint(d)


# ---- inspect checks the weights against the config ----------------------------------------------

def _run_cli(argv):
    import contextlib
    import io

    from ascend_adapt.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_inspect_exits_nonzero_listing_mismatches(tiny, tmp_path):
    d = _copy_with_config(tiny["llama"], tmp_path / "m", _config_text("llama", "intermediate_size", "200"))
    rc, out, err = _run_cli(["inspect", str(d)])
    assert rc == 2  # was 0
    assert "parameters   158,016 in 21 tensors" in out  # what it could read is still printed
    assert ("model.layers.0.mlp.gate_proj.weight: expected shape (200, 64) from config.json, "
            "actual (176, 64) in model.safetensors") in out
    assert "problems     6" in out and "6 problems" in err
    rc, out, _ = _run_cli(["inspect", str(d), "--json"])
    data = json.loads(out)
    assert rc == 2 and data["ok"] is False and len(data["mismatches"]) == 6
    assert data["mismatches"][0] == {"kind": "shape", "name": "model.layers.0.mlp.gate_proj.weight",
                                     "expected": [200, 64], "actual": [176, 64], "file": "model.safetensors"}


def test_inspect_lists_missing_and_unexpected_tensors(tiny, tmp_path):
    d = _copy_with_config(tiny["llama"], tmp_path / "m", _config_text("llama", "num_hidden_layers", "3"))
    r = inspect_checkpoint(d)
    assert [m["kind"] for m in r.mismatches] == ["missing"] * 9
    assert "model.layers.2.input_layernorm.weight: expected shape (64,) from config.json, actual: missing" in r.problems
    d2 = _copy_with_config(tiny["llama"], tmp_path / "u", _config_text("llama", "num_hidden_layers", "1"))
    r = inspect_checkpoint(d2)
    assert {m["kind"] for m in r.mismatches} == {"unexpected"} and len(r.mismatches) == 9


def test_inspect_of_a_matching_checkpoint_exits_zero(tiny):
    for arch, d in tiny.items():
        rc, out, _ = _run_cli(["inspect", str(d)])
        assert rc == 0, out
        assert "every tensor matches" in out


def test_inspect_without_config_prints_tensors_and_fails(tiny, tmp_path):
    import shutil

    d = tmp_path / "n"
    shutil.copytree(tiny["chatglm"], d)
    (d / "config.json").unlink()
    rc, out, err = _run_cli(["inspect", str(d)])
    assert rc == 2 and "30 tensors" in out and "config.json is missing" in out


# ---- the safetensors header: refuse exactly what the safetensors library refuses ----------------

def _entry(dtype, shape, offsets):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


E = '"dtype":"F32","shape":[2],"data_offsets":[0,8]'
# (header: dict or raw bytes, data section bytes)
HEADER_CASES = {
    "ok": ({"a": _entry("F32", [2], [0, 8])}, 8),
    "overlap": ({"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [4, 12])}, 12),
    "same_bytes": ({"a": _entry("F32", [2], [0, 8]), "b": _entry("F32", [2], [0, 8])}, 8),
    "gap": ({"a": _entry("F32", [1], [0, 4]), "b": _entry("F32", [1], [8, 12])}, 12),
    "first_not_at_0": ({"a": _entry("F32", [1], [4, 8])}, 8),
    "trailing_bytes": ({"a": _entry("F32", [2], [0, 8])}, 12),
    "truncated": ({"a": _entry("F32", [2], [0, 8])}, 4),
    "out_of_order_ok": ({"b": _entry("F32", [2], [8, 16]), "a": _entry("F32", [2], [0, 8])}, 16),
    "empty_inside": ({"a": _entry("F32", [2], [0, 8]), "z": _entry("F32", [0], [4, 4])}, 8),
    "empty_at_end_ok": ({"a": _entry("F32", [2], [0, 8]), "z": _entry("F32", [0], [8, 8])}, 8),
    "no_tensors_ok": ({}, 0),
    "scalar_ok": ({"a": _entry("F32", [], [0, 4])}, 4),
    "end_before_begin": ({"a": _entry("F32", [0], [8, 0])}, 8),
    "negative_size": ({"a": _entry("F32", [-2], [0, 8])}, 8),
    "negative_offset": ({"a": _entry("F32", [2], [-8, 0])}, 8),
    "float_size": ({"a": _entry("F32", [2.0], [0, 8])}, 8),
    "bool_size": ({"a": _entry("F32", [True], [0, 4])}, 4),
    "shape_string": ({"a": _entry("F32", "2", [0, 8])}, 8),
    "three_offsets": ({"a": _entry("F32", [2], [0, 8, 9])}, 8),
    "dtype_list": ({"a": _entry(["F32"], [2], [0, 8])}, 8),  # was a traceback
    "dtype_unknown": ({"a": _entry("f32", [2], [0, 8])}, 8),
    "size_overflows_64_bits": ({"a": _entry("F32", [2 ** 62, 1], [0, 0])}, 0),
    "zero_dim_big_ok": ({"a": _entry("F32", [2 ** 62, 0], [0, 0])}, 0),
    "dim_beyond_u64": ({"a": _entry("F32", [2 ** 64, 0], [0, 0])}, 0),
    "bytes_mismatch": ({"a": _entry("F32", [3], [0, 8])}, 8),
    "metadata_ok": ({"__metadata__": {"format": "pt"}, "a": _entry("F32", [2], [0, 8])}, 8),
    "metadata_null_ok": ({"__metadata__": None, "a": _entry("F32", [2], [0, 8])}, 8),
    "metadata_int_value": ({"__metadata__": {"k": 1}}, 0),
    "metadata_list": ({"__metadata__": []}, 0),
    "entry_not_object": ({"a": [1]}, 0),
    "missing_dtype": ({"a": {"shape": [2], "data_offsets": [0, 8]}}, 8),
    "extra_field_ok": ({"a": {**_entry("F32", [2], [0, 8]), "x": 1}}, 8),
    "top_level_list": (b"[]", 0),
    "nan": (b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', 8),
    "infinity_ignored_field": (('{"a":{%s,"x":Infinity}}' % E).encode(), 8),
    "negative_zero": (b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}', 0),
    "repeated_field": (b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8),
    "repeated_tensor_ok": (('{"a":{%s},"a":{%s}}' % (E, E)).encode(), 8),
    "repeated_metadata": (('{"__metadata__":{},"__metadata__":{},"a":{%s}}' % E).encode(), 8),
    "lone_surrogate": (('{"\\ud800":{%s}}' % E).encode(), 8),
    "surrogate_pair_ok": (('{"\\ud83d\\ude00":{%s}}' % E).encode(), 8),
    "bad_utf8": (('{"\xff":{%s}}' % E).encode("latin-1"), 8),
    "bom": (b"\xef\xbb\xbf" + ('{"a":{%s}}' % E).encode(), 8),
    "padding_spaces_ok": (('{"a":{%s}}     ' % E).encode(), 8),
    "nul_padding": (('{"a":{%s}}\0' % E).encode(), 8),
    "empty_header": (b"", 0),
    "nested_125_ok": (('{"a":{%s,"x":%s%s}}' % (E, "[" * 125, "]" * 125)).encode(), 8),
    "nested_126": (('{"a":{%s,"x":%s%s}}' % (E, "[" * 126, "]" * 126)).encode(), 8),
    "huge_int_ignored_field": (('{"a":{%s,"x":%s}}' % (E, "9" * 400)).encode(), 8),
}


def _write(path, header, data_len):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * data_len)
    return path


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_reader_refuses_exactly_what_safetensors_refuses(tmp_path, case):
    from safetensors import safe_open

    p = _write(tmp_path / "x.safetensors", *HEADER_CASES[case])
    try:
        with safe_open(str(p), "np"):
            library_accepts = True
    except Exception:  # the library's SafetensorError
        library_accepts = False
    try:
        read_safetensors_header(p)
        ours_accepts = True
    except CheckpointError as exc:
        ours_accepts = False
        assert str(p) in exc.message and exc.hint  # names the file, says what to do
        if isinstance(HEADER_CASES[case][0], dict) and len(HEADER_CASES[case][0]) == 1 \
                and "__metadata__" not in HEADER_CASES[case][0] and "tensor" in exc.message:
            assert "'a'" in exc.message  # and the tensor
    assert ours_accepts == library_accepts
    assert ours_accepts == case.endswith("_ok") or case == "ok"


def test_overlap_message_names_both_tensors(tmp_path):
    p = _write(tmp_path / "o.safetensors", *HEADER_CASES["overlap"])
    with pytest.raises(CheckpointError, match=r"tensor 'b' \(bytes \[4, 12\) of the data section\) overlaps "
                                              r"tensor 'a' \(bytes \[0, 8\)\)"):
        read_safetensors_header(p)


def test_dtypes_the_format_has_but_we_cannot_read(tmp_path):
    # valid safetensors (the library reads them) that ascend-adapt refuses clearly rather than misreads
    p = _write(tmp_path / "c.safetensors", {"a": _entry("C64", [1], [0, 8])}, 8)
    with pytest.raises(CheckpointError, match="dtype 'C64', which ascend-adapt cannot read"):
        read_safetensors_header(p)


def test_header_errors_reach_inspect_as_clean_errors(tiny, tmp_path):
    import shutil

    d = tmp_path / "h"
    shutil.copytree(tiny["llama"], d)
    _write(d / "model.safetensors", *HEADER_CASES["dtype_list"])
    rc, _, err = _run_cli(["inspect", str(d)])
    assert rc == 2 and "tensor 'a' has unknown dtype [\"F32\"]" in err and "Traceback" not in err


def test_every_error_is_an_ascend_adapt_error():
    assert issubclass(ConfigError, AscendAdaptError) and issubclass(CheckpointError, AscendAdaptError)
