"""One Runner contract: life cycle, metadata, input checks, and each implementation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ascend_adapt.errors import ConfigError  # noqa: E402
from ascend_adapt.runtime.runners import OrtRunner, RunnerError, SimRunner, TorchRunner  # noqa: E402
from ascend_adapt.sim import examples as ex  # noqa: E402
from ascend_adapt.sim.acceptance import SimulatorRejection  # noqa: E402
from ascend_adapt.sim.settings import GearSpec, SimSettings  # noqa: E402
from tolerances import low_precision_atol  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    return ex.save(ex.mlp(batch=2), tmp_path_factory.mktemp("mlp") / "mlp.onnx", external="weights.bin")


def test_life_cycle_and_metadata(mlp_path):
    r = OrtRunner(mlp_path)
    with pytest.raises(RunnerError, match="before activate"):
        r.infer({"x": X})
    with r:
        assert r.is_active
        dtype, shape = r.get_input_metadata()["x"]
        assert dtype == np.float32 and tuple(shape) == (2, 64)
        y = r.infer({"x": X})["y"]
        assert y.shape == (2, 32) and r.last_inference_time_ms > 0
        r.infer({"x": X})
        assert len(r.inference_times_ms) == 2
    assert not r.is_active
    r.deactivate()  # idempotent


@pytest.mark.parametrize("feeds,match", [
    ({"x": X.astype(np.float64)}, "dtype float64"),
    ({"x": X[:1]}, "shape"),
    ({}, "missing"),
    ({"x": X, "z": X}, "unexpected"),
])
def test_bad_feeds_are_refused_by_name(mlp_path, feeds, match):
    with OrtRunner(mlp_path) as r, pytest.raises(RunnerError, match=match):
        r.infer(feeds)


def test_sim_must_keep_is_bit_identical_to_ort_and_fp16_differs(mlp_path):
    with OrtRunner(mlp_path) as o:
        ref = o.infer({"x": X})["y"]
    with SimRunner(mlp_path, "Ascend310P3", "must_keep_origin_dtype") as s:
        assert np.array_equal(s.infer({"x": X})["y"], ref)
        assert s.acceptance.accepted
    with SimRunner(mlp_path, "Ascend310P3", "force_fp16") as s:
        y = s.infer({"x": X})["y"]
        # 10 fp16 roundings on the MLP's path, 2^-11 relative each (tests/tolerances.py)
        assert not np.array_equal(y, ref) and np.abs(y - ref).max() <= low_precision_atol(10, np.abs(ref).max())
        assert s.last_simulated_time_ms == pytest.approx(s.last_cost.total_ms) and s.last_simulated_time_ms > 0
        assert s.last_cost.simulated and s.stats.low_nodes == 5


def test_sim_runner_refuses_at_activate(tmp_path):
    p = ex.save(ex.mlp(batch="B"), tmp_path / "dyn.onnx")
    r = SimRunner(p, "Ascend310")
    with pytest.raises(SimulatorRejection, match="E10055"):
        r.activate()
    assert not r.is_active
    with SimRunner(p, "Ascend310", check=False) as r:  # what-if: run it anyway
        assert r.acceptance.problems
        assert r.infer({"x": X})["y"].shape == (2, 32)


def test_sim_runner_runs_only_compiled_gears(tmp_path):
    p = ex.save(ex.mlp(batch="B"), tmp_path / "dyn.onnx")
    st = SimSettings(target="Ascend310", input_shape={"x": (-1, 64)}, gears=GearSpec("dynamic_dims", ((1,), (4,))))
    with SimRunner(p, settings=st) as r:
        assert r.infer({"x": np.zeros((4, 64), np.float32)})["y"].shape == (4, 32)
        with pytest.raises(SimulatorRejection) as e:
            r.infer({"x": X})  # batch 2 is no gear: the host must pad to 4
        assert e.value.code == "100000" and "match no gear" in str(e.value)
        assert r.cost_for({"x": (4, 64)}).input_shapes == {"x": (4, 64)}


def test_sim_runner_dump_and_keep_dtype_override(tmp_path):
    x = (300 * np.random.default_rng(1).standard_normal((2, 8, 256))).astype(np.float32)
    p = ex.save(ex.rmsnorm_block(), tmp_path / "rms.onnx")
    with SimRunner(p, "Ascend310P3", "fp16", dump=True) as r:
        out = r.infer({"x": x})
        assert np.isinf(out["sq"]).any() and not np.isfinite(out["var"]).all()
    with SimRunner(p, "Ascend310P3", "fp16", keep_dtype=ex.RMSNORM_NODES) as r:
        out = r.infer({"x": x})
        assert set(out) == {"y", "var"} and np.isfinite(out["y"]).all()


def test_sim_runner_needs_a_target_for_bare_onnx_and_refuses_real_om(mlp_path, tmp_path):
    with pytest.raises(ConfigError, match="target"):
        SimRunner(mlp_path)
    with pytest.raises(ConfigError, match="real OM"):
        SimRunner(tmp_path / "model.om", "Ascend310")


def test_ort_runner_dump(mlp_path):
    with OrtRunner(mlp_path, dump=True) as r:
        out = r.infer({"x": X})
    assert {"h0", "h1", "h2", "h3", "y"} <= set(out)


def test_torch_runner():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def forward(self, x):
            return x * 2, x + 1

    with TorchRunner(Net(), output_names=["double"], input_metadata={"x": (np.dtype("float32"), (2, 64))}) as r:
        out = r.infer({"x": X})
        assert np.array_equal(out["double"], 2 * X) and np.array_equal(out["output_1"], X + 1)
        with pytest.raises(RunnerError):
            r.infer({"x": X[:1]})


def test_torch_runner_over_the_golden_backend():
    pytest.importorskip("torch")
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.model_zoo.tiny import random_canonical_weights, tiny_config
    from ascend_adapt.backends.torch.session import TorchBackend

    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    golden = TorchBackend.from_canonical(spec, random_canonical_weights(spec, 0))
    ids = np.array([[1, 20, 30, 40]], np.int64)
    with TorchRunner.from_backend(golden) as r:
        out = r.infer({"input_ids": ids})
    logits, layers = golden.full_logits(ids, layer_outputs=True)
    assert np.array_equal(out["logits"], logits)
    assert {"embed", "layers.0", "final_norm", "logits"} <= set(out)
    assert np.array_equal(out["layers.0"], layers["layers.0"])


@pytest.mark.mindspore
def test_mindspore_runner():
    pytest.importorskip("mindspore")
    from ascend_adapt.runtime.runners import MindSporeRunner

    with MindSporeRunner(lambda x: x * 3, output_names=["y"]) as r:
        assert np.array_equal(r.infer({"x": X})["y"], 3 * X)  # one fp32 multiply, as numpy's: exact


@pytest.mark.mindspore
def test_mindspore_runner_over_the_mindspore_backend():
    pytest.importorskip("mindspore")
    from ascend_adapt.model_zoo.base import ADAPTERS
    from ascend_adapt.backends.mindspore.session import MindSporeBackend
    from ascend_adapt.model_zoo.tiny import random_canonical_weights, tiny_config
    from ascend_adapt.runtime.runners import MindSporeRunner

    spec = ADAPTERS.get("llama").spec_from_config(tiny_config("llama"))
    be = MindSporeBackend.from_canonical(spec, random_canonical_weights(spec, 0), mode="pynative")
    ids = np.array([[1, 20, 30, 40]], np.int64)
    with MindSporeRunner.from_backend(be, layer_outputs=False) as r:
        out = r.infer({"input_ids": ids})
    assert set(out) == {"logits"} and np.array_equal(out["logits"], be.full_logits(ids))


def test_no_heavy_imports_for_the_backend_modules():
    code = ("import sys, ascend_adapt.runtime.runners, ascend_adapt.backends.sim.session, "
            "ascend_adapt.backends.acl.session, ascend_adapt.sim, ascend_adapt.backends.sim.artifact\n"
            "from ascend_adapt.backends import BACKENDS\n"
            "assert 'sim' in BACKENDS and 'acl' in BACKENDS\n"
            "heavy = [m for m in ('onnxruntime', 'torch', 'mindspore', 'acl', 'onnx') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
