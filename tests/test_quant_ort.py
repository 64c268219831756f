"""Issue #14 follow-up: onnxruntime runs quantized exports (`operators.quant.ort_model_source`).

Plain onnxruntime does not know AscendAntiQuant / AscendQuant / AscendDequant; the onnxruntime
backend and `OrtRunner` (compare, run) now lower them with the simulator's `lower_quant_ops`.
Before this both failed to create a session on a --quantize export (unknown op type).
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

PROMPT = "1,15,27,300,42,7"
NEW = 16


@pytest.fixture(scope="module")
def w8a16_export(tmp_path_factory):
    from ascend_adapt.model_zoo.tiny import make_tiny_checkpoint
    from ascend_adapt.om_convert.builder import build_llm_onnx

    root = tmp_path_factory.mktemp("quant-ort")
    src = make_tiny_checkpoint(root / "ckpt", "llama")
    out = root / "export"
    build_llm_onnx(src, out, batch=1, max_len=48, gears=[16], weight_dtype="float16", target="Ascend310P3",
                   progress=False, quantize="w8a16")
    return out


def _gen(*args):
    from click.testing import CliRunner

    from ascend_adapt.cli.main import cli

    r = CliRunner().invoke(cli, ["generate", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output.strip().splitlines()[-1]


def test_generate_onnxruntime_equals_the_simulator_on_a_w8a16_export(w8a16_export):
    """Identical tokens, not a bound: in must_keep_origin_dtype the simulator rewrites no dtype, so
    both run the same graph — the export with its quant ops lowered by the one `lower_quant_ops` —
    through onnxruntime's CPU kernels with its default graph optimizations: the same operations on
    the same inputs give bit-identical logits, hence the same argmax at every step."""
    ort = _gen(w8a16_export, "--backend", "onnxruntime", "--prompt-ids", PROMPT, "--max-new-tokens", NEW,
               "--output-ids")
    sim = _gen(w8a16_export, "--backend", "sim", "--precision-mode", "must_keep_origin_dtype", "--prompt-ids",
               PROMPT, "--max-new-tokens", NEW, "--output-ids")
    assert ort == sim
    assert len(ort.split(",")) >= 1


def test_ort_runner_runs_a_quantized_graph(w8a16_export):
    """`compare` / `run`'s OrtRunner: a session on the quantized step graph (external weights
    beside it) and one step whose next_token is the onnxruntime backend's."""
    import json

    import numpy as np

    from ascend_adapt.backends.onnxruntime.session import OrtLMBackend
    from ascend_adapt.runtime.runners import OrtRunner

    man = json.loads((w8a16_export / "export.json").read_text())
    path = w8a16_export / man["graphs"]["step"]["file"]
    r = OrtRunner(path)
    r.activate()
    from ascend_adapt.spec import ModelSpec
    from ascend_adapt.contract import io_spec, step_shape

    spec = ModelSpec.from_dict(man["spec"])
    be = OrtLMBackend(w8a16_export)
    rng = np.random.default_rng(0)
    feeds = {}
    for name, shape, dtype in io_spec(spec, "step", 1, 1, 48, "float16")["inputs"]:
        dims = step_shape(shape, 16)
        if name == "input_ids":
            feeds[name] = rng.integers(0, spec.vocab_size, dims).astype(dtype)
        else:
            feeds[name] = np.zeros(dims, dtype)  # positions / start slot 0, mask all visible, empty cache
    got = r.infer(feeds)
    want = be.executor("step")(feeds)
    assert np.array_equal(got["next_token"], want["next_token"])
    r.deactivate()
    be.close()
