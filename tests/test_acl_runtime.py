"""One ACL runtime per process (ascend_adapt.backends.acl.runtime.AclRuntime) and the strict fake pyACL
(ascend_adapt.testing.fake_acl): life cycle, memory bounds, memcpy kinds, counters; the old
per-runner acl.init failing under the fake; tiny Llama-2 / ChatGLM-6B converted in both layouts
generating the golden's greedy tokens through `generate --backend acl` in one process."""

from __future__ import annotations

import numpy as np
import pytest

from ascend_adapt.backends.acl.runner import AclRunner
from ascend_adapt.backends.acl.runtime import (ACL_ERROR_INVALID_PARAM, ACL_ERROR_REPEAT_FINALIZE,
                                              ACL_ERROR_REPEAT_INITIALIZE, ACL_ERROR_RT_CONTEXT_NULL,
                                              ACL_ERROR_RT_INVALID_DEVICEID, ACL_ERROR_UNINITIALIZE, AclRuntime,
                                              AclRuntimeError, acl_module, check)
from ascend_adapt.testing.fake_acl import FakeAcl

H2D, D2H, D2D = 1, 2, 3


def opened(device_id: int = 0) -> FakeAcl:
    """A fake after init / set_device / create_context (a current context on this thread)."""
    fake = FakeAcl()
    assert fake.init() == 0 and fake.rt.set_device(device_id) == 0
    assert fake.rt.create_context(device_id)[1] == 0
    return fake


def test_fake_life_cycle_codes():
    fake = FakeAcl()
    assert fake.rt.malloc(16, 0) == (None, ACL_ERROR_UNINITIALIZE)  # before init
    assert fake.mdl.execute(1, 2, 3) == ACL_ERROR_UNINITIALIZE
    assert fake.init() == 0
    assert fake.init() == ACL_ERROR_REPEAT_INITIALIZE  # aclInit: once per process
    assert fake.rt.malloc(16, 0)[1] == ACL_ERROR_RT_CONTEXT_NULL  # no set_device / context yet
    assert fake.rt.set_device(8) == ACL_ERROR_RT_INVALID_DEVICEID  # 8 devices: ids 0-7
    assert fake.finalize() == 0
    assert fake.finalize() == ACL_ERROR_REPEAT_FINALIZE
    assert fake.rt.set_device(0) == ACL_ERROR_UNINITIALIZE  # after finalize
    assert fake.init() == ACL_ERROR_REPEAT_INITIALIZE  # no second life in the same process
    assert fake.calls["init"] == 3 and "finalized" in fake.get_recent_err_msg()


def test_fake_memory_bounds_kinds_and_counters():
    fake = opened()
    dev, ret = fake.rt.malloc(16, 0)
    assert ret == 0
    dev2 = fake.rt.malloc(16, 0)[0]
    host = fake.rt.malloc_host(16)[0]
    src = fake.util.bytes_to_ptr(bytes(range(16)))
    assert fake.rt.memcpy(dev, 16, src, 16, H2D) == 0
    assert fake.rt.memcpy(dev + 8, 8, src, 8, H2D) == 0  # a pointer inside the allocation
    assert fake.rt.memcpy(dev + 8, 16, src, 8, H2D) == ACL_ERROR_INVALID_PARAM  # dest_max past the allocation
    assert fake.rt.memcpy(dev, 16, src, 17, H2D) == ACL_ERROR_INVALID_PARAM  # count > dest_max
    assert fake.rt.memcpy(dev + 16, 1, src, 1, H2D) == ACL_ERROR_INVALID_PARAM  # one past the end
    assert "run past" in fake.get_recent_err_msg() or "no allocation" in fake.get_recent_err_msg()
    assert fake.rt.memcpy(dev, 16, src, 16, D2H) == ACL_ERROR_INVALID_PARAM  # kind does not match the pointers
    assert fake.rt.memcpy(host, 16, dev, 16, H2D) == ACL_ERROR_INVALID_PARAM
    assert fake.rt.memcpy(dev, 16, src, 16, 7) == ACL_ERROR_INVALID_PARAM  # no such kind
    assert fake.rt.memcpy(src, 16, dev, 16, D2H) == ACL_ERROR_INVALID_PARAM  # bytes_to_ptr memory is read-only
    assert fake.rt.memcpy(dev2, 16, dev, 16, D2D) == 0
    assert fake.rt.memcpy(host, 16, dev2, 16, D2H) == 0
    assert fake.util.ptr_to_bytes(host, 16) == bytes(range(8)) + bytes(range(8))
    assert fake.bytes == {"host_to_host": 0, "host_to_device": 24, "device_to_host": 16, "device_to_device": 16}
    assert fake.copies == {"host_to_host": 0, "host_to_device": 2, "device_to_host": 1, "device_to_device": 1}
    assert fake.rt.free(dev) == 0
    assert fake.rt.free(dev) == ACL_ERROR_INVALID_PARAM and "already freed" in fake.get_recent_err_msg()
    assert fake.rt.memcpy(dev, 16, src, 16, H2D) == ACL_ERROR_INVALID_PARAM  # a freed pointer
    assert fake.rt.free(host) == ACL_ERROR_INVALID_PARAM  # host memory goes back with free_host
    assert fake.rt.free_host(host) == 0 and fake.rt.free(dev2) == 0
    assert fake.live()["device_allocations"] == 0 and fake.live()["host_allocations"] == 0


def test_errors_keep_code_name_and_say_what_to_do():
    fake = FakeAcl()
    fake.init()
    with pytest.raises(AclRuntimeError) as e:
        check(fake.init(), "acl.init", fake)
    assert e.value.code == ACL_ERROR_REPEAT_INITIALIZE and e.value.code_name == "ACL_ERROR_REPEAT_INITIALIZE"
    assert "100002 (ACL_ERROR_REPEAT_INITIALIZE)" in str(e.value) and "AclRuntime" in e.value.hint
    unknown = AclRuntimeError("acl.mdl.execute", 999999)
    assert unknown.code_name == "unknown" and "ASCEND_SLOG_PRINT_TO_STDOUT" in unknown.hint


def test_acl_module_follows_the_environment(monkeypatch):
    from ascend_adapt.errors import ConfigError
    from ascend_adapt.testing import fake_acl

    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")
    assert acl_module() is fake_acl.acl
    mine = FakeAcl()
    assert acl_module(mine) is mine
    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fkae")
    with pytest.raises(ConfigError, match="ASCEND_ADAPT_ACL"):
        acl_module()


# ----------------------------------------------------------------------------------- the runtime
def two_graph_export(tiny_dir, tmp_path):
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    exp = tmp_path / "exp"
    build_llm_onnx(tiny_dir("llama", unit_head=True), exp, batch=1, seq_len=6, max_len=14, progress=False)
    art = omsim_from_export(exp, exp / "model.omsim", "Ascend310P3")
    return exp, art.graph_path("prefill"), art.graph_path("decode")


def zero_feeds(runner):
    return {n: np.zeros([d or 1 for d in shape], dt) for n, (dt, shape) in runner.get_input_metadata().items()}


def test_one_runtime_per_process_reference_counted(tiny_dir, tmp_path):
    """Two OMs in one process: one init, one set_device, one context; closing one leaves the other
    running; the last close resets the device but keeps ACL up, so a later model still loads;
    finalize runs once, at shutdown (atexit), after which loading is refused with a clear error."""
    pytest.importorskip("onnxruntime")
    _, prefill, decode = two_graph_export(tiny_dir, tmp_path)
    fake = FakeAcl()
    a = AclRunner(prefill, acl=fake).activate()
    b = AclRunner(decode, acl=fake).activate()
    assert (fake.calls["init"], fake.calls["rt.set_device"], fake.calls["rt.create_context"]) == (1, 1, 1)
    a.deactivate()
    assert fake.live()["contexts"] == 1 and fake.calls["rt.reset_device"] == 0
    b.infer(zero_feeds(b))  # the other model still runs
    b.deactivate()
    assert fake.live()["contexts"] == 0 and fake.calls["rt.reset_device"] == 1 and fake.state == "initialized"
    with AclRunner(decode, acl=fake) as c:  # a later model in the same process
        c.infer(zero_feeds(c))
    assert fake.calls["init"] == 1 and fake.calls["rt.set_device"] == 2
    rt = AclRuntime.of(fake)
    assert rt.owns_init and rt.models == 0
    rt.shutdown()
    rt.shutdown()
    assert fake.calls["finalize"] == 1
    with pytest.raises(AclRuntimeError, match="cannot be initialised again") as e:
        AclRunner(decode, acl=fake).activate()
    assert e.value.code == ACL_ERROR_REPEAT_INITIALIZE


def test_acl_initialised_by_another_library_is_shared_not_finalized(tiny_dir, tmp_path):
    """When something else in the process already called acl.init (torch_npu, MindSpore), its
    100002 means "already up": models load, and the finalize is left to that owner."""
    pytest.importorskip("onnxruntime")
    _, prefill, _ = two_graph_export(tiny_dir, tmp_path)
    fake = FakeAcl()
    assert fake.init() == 0  # the other library
    with AclRunner(prefill, acl=fake) as r:
        r.infer(zero_feeds(r))
    rt = AclRuntime.of(fake)
    assert not rt.owns_init
    rt.shutdown()
    assert fake.calls["finalize"] == 0 and fake.state == "initialized"


def test_two_threads_use_the_context_of_their_device(tiny_dir, tmp_path):
    """pyACL contexts are per thread: a runner used from another thread sets its device's context first."""
    import threading

    pytest.importorskip("onnxruntime")
    _, prefill, _ = two_graph_export(tiny_dir, tmp_path)
    fake = FakeAcl()
    with AclRunner(prefill, acl=fake) as r:
        feeds = zero_feeds(r)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("out", r.infer(feeds)))
        t.start()
        t.join()
        assert "out" in box and fake.calls["rt.set_context"] == 1


class OldAclRunner(AclRunner):
    """The runtime before issue 13 (ascend_adapt/backends/acl/session.py at 48fb07b): every runner
    called acl.init / set_device / create_context itself, and acl.finalize when it closed."""

    def _open(self, acl):
        self._old_stage = 0
        check(acl.init(), "acl.init", acl)
        self._old_stage = 1
        check(acl.rt.set_device(self.device_id), "acl.rt.set_device", acl)
        self._old_stage = 2
        self.context = check(acl.rt.create_context(self.device_id), "acl.rt.create_context", acl)
        self.model_id = check(acl.mdl.load_from_file(str(self.om_path)), "acl.mdl.load_from_file", acl)

    def deactivate_impl(self):
        acl, stage = self.acl, getattr(self, "_old_stage", 0)
        if acl is None:
            return
        if self.model_id is not None:
            acl.mdl.unload(self.model_id)
        if self.context is not None:
            acl.rt.destroy_context(self.context)
        if stage >= 2:
            acl.rt.reset_device(self.device_id)
        if stage >= 1:
            acl.finalize()
        self._reset_handles()


def test_the_old_per_runner_init_fails_under_the_strict_fake(tiny_dir, tmp_path):
    """The default two-OM build under the old code: the second runner's acl.init returns 100002,
    and closing the first finalizes ACL for the whole process, so nothing loads afterwards. The
    old lenient fake returned 0 from every init, which is why the old tests passed."""
    pytest.importorskip("onnxruntime")
    _, prefill, decode = two_graph_export(tiny_dir, tmp_path)
    fake = FakeAcl()
    first = OldAclRunner(prefill, acl=fake).activate()
    with pytest.raises(AclRuntimeError) as e:
        OldAclRunner(decode, acl=fake).activate()
    assert e.value.code == ACL_ERROR_REPEAT_INITIALIZE and e.value.api == "acl.init"
    first.deactivate()
    assert fake.state == "finalized"
    with pytest.raises(AclRuntimeError):  # today's runner in the same process: ACL is gone
        AclRunner(decode, acl=fake).activate()
    # today's runtime on a fresh process: both OMs load and run
    fresh = FakeAcl()
    with AclRunner(prefill, acl=fresh) as p, AclRunner(decode, acl=fresh) as d:
        p.infer(zero_feeds(p))
        d.infer(zero_feeds(d))
    assert fresh.calls["init"] == 1


# ----------------------------------------------------------------------------------- done-when 1
CASES = [("llama", {}), ("chatglm", {"untied": True})]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_dir):
    """convert outputs (no ATC: the simulator artifact is the fake's stand-in OM) of tiny Llama-2
    and ChatGLM-6B in the two-graph layout and the gear (step) layout, with the torch golden's
    greedy tokens."""
    from ascend_adapt.om_convert.convert import convert
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from ascend_adapt.model_zoo.tiny import tiny_config

    out = {}
    root = tmp_path_factory.mktemp("acl-done-when")
    for arch, kw in CASES:
        ckpt = tiny_dir(arch, unit_head=True, **kw)
        ids = [1, 40, 50, 60, 70]
        if arch == "chatglm":  # prompts end with [gMASK] <sop>, as ChatGLM's tokenizer makes them
            cfg = tiny_config("chatglm")
            ids = [40, 50, 60, cfg["gmask_token_id"], cfg["bos_token_id"]]
        prompt = np.array([ids], np.int64)
        golden = greedy_tokens(get_backend("torch", ckpt), prompt, 8)[0].tolist()
        for layout, opts in (("two-graph", {"layout": "two-graph", "seq_len": 8}), ("gears", {"gears": [[4], [8]]})):
            d = root / f"{arch}-{layout}"
            convert(ckpt, d, soc="Ascend310P3", max_len=32, verify=False, **opts)
            out[(arch, layout)] = (d, prompt, golden)
    return out


def test_generate_backend_acl_gives_the_golden_tokens_in_one_process(converted, monkeypatch):
    """Done-when 1: with ASCEND_ADAPT_ACL=fake, `generate --backend acl` (CLI, in this process) and
    the Python API reproduce the torch golden's greedy tokens for both layouts of both models,
    one after another in one process (one ACL init), a second model loading after the first."""
    from click.testing import CliRunner

    from ascend_adapt.cli.cmd_generate import generate_cmd
    from ascend_adapt.om_convert.convert import resolve_artifact
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens
    from ascend_adapt.testing.fake_acl import acl as process_fake

    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")
    inits = process_fake.calls["init"]
    for (arch, layout), (d, prompt, golden) in converted.items():
        ids = ",".join(str(int(t)) for t in prompt[0])
        r = CliRunner().invoke(generate_cmd, [str(d), "--backend", "acl", "--prompt-ids", ids, "--max-new-tokens",
                                              "8", "--output-ids"])
        assert r.exit_code == 0, r.output
        assert r.output.strip().splitlines()[-1] == ",".join(map(str, golden)), (arch, layout, r.output)
        be = get_backend("acl", resolve_artifact(d, "acl"))
        assert greedy_tokens(be, prompt, 8)[0].tolist() == golden, (arch, layout)
        be.close()
    assert process_fake.calls["init"] - inits <= 1  # at most the first model initialised ACL
    assert process_fake.state == "initialized"  # the CLI's models stay loaded until exit: atexit finalizes


def test_two_models_loaded_at_once_in_one_process(converted):
    """Llama-2 (two OMs) and ChatGLM-6B (one gear OM) open together on one device: one init, one
    context, both generate their golden tokens, closing one leaves the other running."""
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    fake = FakeAcl()
    (d1, p1, g1), (d2, p2, g2) = converted[("llama", "two-graph")], converted[("chatglm", "gears")]
    b1, b2 = get_backend("acl", d1, acl=fake), get_backend("acl", d2, acl=fake)
    assert greedy_tokens(b1, p1, 8)[0].tolist() == g1
    assert greedy_tokens(b2, p2, 8)[0].tolist() == g2
    assert fake.calls["mdl.load_from_file"] == 3 and fake.calls["init"] == 1 and fake.calls["rt.create_context"] == 1
    b1.close()
    assert greedy_tokens(b2, p2, 4)[0].tolist() == g2[:4]
    b2.close()
    assert fake.live() == {"device_allocations": 0, "host_allocations": 0, "models": 0, "datasets": 0,
                           "data_buffers": 0, "contexts": 0}


# ----------------------------------------------------------------------------------- KV cache on the card
def test_fake_memcpy_2d_and_memset_bounds():
    fake = opened()
    src, dst = fake.rt.malloc(4 * 6, 0)[0], fake.rt.malloc(4 * 10, 0)[0]
    assert fake.rt.memcpy(src, 24, fake.util.bytes_to_ptr(bytes(range(24))), 24, H2D) == 0
    assert fake.rt.memset(dst, 40, 0xFF, 40) == 0
    # 3 rows of 4 bytes: source pitch 8 (rows 0-3, 8-11, 16-19), destination pitch 12 at offset 4
    assert fake.rt.memcpy_2d(dst + 4, 12, src, 8, 4, 3, D2D) == 0
    host = fake.rt.malloc_host(40)[0]
    assert fake.rt.memcpy(host, 40, dst, 40, D2H) == 0
    got = fake.util.ptr_to_bytes(host, 40)
    assert got == (b"\xff" * 4 + bytes(range(0, 4)) + b"\xff" * 8 + bytes(range(8, 12)) + b"\xff" * 8
                   + bytes(range(16, 20)) + b"\xff" * 8)
    assert fake.bytes["device_to_device"] == 12 and fake.copies["device_to_device"] == 1
    assert fake.rt.memcpy_2d(dst + 16, 12, src, 8, 4, 3, D2D) == ACL_ERROR_INVALID_PARAM  # last row past dst
    assert fake.rt.memcpy_2d(dst, 12, src, 8, 9, 2, D2D) == ACL_ERROR_INVALID_PARAM  # width > source pitch
    assert fake.rt.memcpy_2d(dst, 12, src, 8, 4, 3, H2D) == ACL_ERROR_INVALID_PARAM  # kind vs pointers
    assert fake.rt.memset(dst, 41, 0, 41) == ACL_ERROR_INVALID_PARAM


@pytest.mark.parametrize("case", [("llama", "two-graph"), ("llama", "gears"), ("chatglm", "gears")])
def test_kv_cache_on_the_card(converted, case):
    """kv_cache="device": the golden's greedy tokens, and per decode step only ids, positions and the
    mask go up and only the logits come down; the new K/V move on the card (strided D2D copy)."""
    from ascend_adapt.spec import ModelSpec
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import greedy_tokens

    d, prompt, golden = converted[case]
    fake = FakeAcl()
    be = get_backend("acl", d, acl=fake, kv_cache="device")
    assert greedy_tokens(be, prompt, 8)[0].tolist() == golden
    spec: ModelSpec = be.spec
    s = be.new_session(1, be.max_len)
    logits = s.prefill(prompt)
    fake.reset_counters()
    for _ in range(3):
        logits = s.decode(np.argmax(logits, -1)[:, None])
    M, L, KVH, D, V = be.max_len, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.vocab_size
    pos = 2 if spec.rotary == "glm2d" else 1
    assert fake.bytes["host_to_device"] == 3 * (4 + 4 * pos + 4 * (M + 1))  # ids, positions, mask [1,1,1,M+1]
    assert fake.bytes["device_to_host"] == 3 * 4 * V  # the logits, nothing else
    kv = np.dtype(next(i for g in be.manifest["graphs"].values() for i in g["inputs"]
                       if i["name"] == "past_keys")["dtype"]).itemsize  # the graphs' cache dtype
    assert fake.bytes["device_to_device"] == 3 * 2 * L * KVH * D * kv  # present K and V into their slots
    assert fake.copies["device_to_device"] == 3 * 2  # one memcpy_2d per tensor
    be.close()
    assert fake.live()["device_allocations"] == 0 and fake.live()["contexts"] == 0


def test_cli_process_with_the_fake_from_the_environment(converted):
    """A real `ascend-adapt generate OUT --backend acl` process with ASCEND_ADAPT_ACL=fake: the golden
    tokens, exit 0 (ACL finalized once at interpreter exit without an error)."""
    import os
    import subprocess
    import sys

    d, prompt, golden = converted[("llama", "two-graph")]
    env = dict(os.environ, ASCEND_ADAPT_ACL="fake")
    r = subprocess.run([sys.executable, "-m", "ascend_adapt", "generate", str(d), "--backend", "acl", "--prompt-ids",
                        ",".join(map(str, prompt[0].tolist())), "--max-new-tokens", "8", "--output-ids"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == ",".join(map(str, golden))
    r2 = subprocess.run([sys.executable, "-m", "ascend_adapt", "generate", str(d), "--backend", "acl", "--prompt-ids",
                         "1,2", "--max-new-tokens", "2", "--output-ids"], env=dict(os.environ, ASCEND_ADAPT_ACL="nope"),
                        capture_output=True, text=True, timeout=300)
    assert r2.returncode == 2 and "ASCEND_ADAPT_ACL" in r2.stderr and "Traceback" not in r2.stderr
