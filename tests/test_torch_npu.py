"""`generate --backend torch_npu / torch_mlu` (issue #16): the error path where the package does not
import, and the device path's plumbing run on the host."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ascend_adapt", *map(str, args)], capture_output=True, text=True,
                          env=env)


def test_backends_are_registered():
    from ascend_adapt.backends import BACKENDS

    assert "torch_npu" in BACKENDS and "torch_mlu" in BACKENDS


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch_npu") is not None, reason="torch_npu present")
def test_torch_npu_missing_names_package_and_cann(tiny_dir):
    r = _cli("generate", tiny_dir("llama"), "--backend", "torch_npu", "--prompt-ids", "1,5,7", "--max-new-tokens", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'torch_npu'" in r.stderr and "CANN 8.5.0" in r.stderr and "fix:" in r.stderr
    assert "pip install torch-npu" in r.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("torch_mlu") is not None, reason="torch_mlu present")
def test_torch_mlu_missing_names_package_and_neuware(tiny_dir):
    r = _cli("generate", tiny_dir("llama"), "--backend", "torch_mlu", "--prompt-ids", "1,5,7", "--max-new-tokens", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'torch_mlu'" in r.stderr and "CTR 2.15" in r.stderr and "NEUWARE_HOME" in r.stderr


def test_package_without_its_libraries_is_reported(tiny_dir, tmp_path):
    """A torch_npu wheel whose CANN libraries are absent fails on import with OSError: the error
    names the package, the library and what to install (not a traceback)."""
    pkg = tmp_path / "site" / "torch_npu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        'raise OSError("libascendcl.so: cannot open shared object file: No such file or directory")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    r = _cli("generate", tiny_dir("llama"), "--backend", "torch_npu", "--prompt-ids", "1,5,7", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "libascendcl.so" in r.stderr and "set_env.sh" in r.stderr


def test_wrong_device_string_is_refused(tiny_dir):
    from ascend_adapt.errors import ConfigError
    from ascend_adapt.backends.torch_npu.session import TorchDeviceBackend

    with pytest.raises(ConfigError, match="not a npu device"):
        TorchDeviceBackend(tiny_dir("llama"), "torch_npu", device="mlu:0")
    with pytest.raises(ConfigError, match="unknown dtype"):
        TorchDeviceBackend(tiny_dir("llama"), "torch_npu", dtype="int8", device="cpu")


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_device_path_on_host_matches_golden(tiny_dir, arch):
    """The device backend's session plumbing (hooks moving inputs and logits, the static cache
    moved once) run with device "cpu": fp32 greedy tokens equal the golden's exactly (same
    module, same inputs, same arithmetic)."""
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.backends.torch.session import TorchBackend
    from ascend_adapt.backends.torch_npu.session import TorchDeviceBackend

    d = tiny_dir(arch)
    gold = TorchBackend(d)
    dev = TorchDeviceBackend(d, "torch_npu", dtype="float32", device="cpu")
    spec = gold.spec
    ids = [11, 12, 13, spec.gmask_token_id, spec.bos_token_id] if arch == "chatglm" else [spec.bos_token_id, 11, 12, 13]
    want = greedy_tokens(gold, np.asarray([ids]), 6)
    got = greedy_tokens(dev, np.asarray([ids]), 6)
    assert np.array_equal(want, got)
    assert dev.name == "torch_npu" and str(dev.device) == "cpu"
