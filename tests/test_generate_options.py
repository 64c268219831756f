"""`generate` inputs that cannot go wrong, and the porting options --prompt-ids / --dump-logits /
--output-ids on every backend (torch, onnxruntime, sim, mindspore, and acl through the strict fake pyACL).

The context check, Ctrl-C between steps, empty prompts, id validation; and the dumped logits of
the torch golden and of the simulator under must_keep_origin_dtype agree within a derived fp32
tolerance (tests/tolerances.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_adapt.cli.main import main as cli
from ascend_adapt.errors import ConfigError
from ascend_adapt.runtime.generate import GenerationConfig, GenerationInterrupted, check_context, generate

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tolerances import fp32_atol  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = [1, 371, 260, 382, 293]  # "hello world"-like ids of the tiny Llama (BOS first)


@pytest.fixture(scope="module")
def llama(tiny_dir, tmp_path_factory):
    """(checkpoint, export dir, must_keep .omsim dir) of the unit-head tiny Llama; S=8, M=48."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    src = tiny_dir("llama", unit_head=True)
    root = tmp_path_factory.mktemp("gen-opts")
    build_llm_onnx(src, root / "export", batch=1, seq_len=8, max_len=48, target="Ascend310P3", progress=False)
    art = omsim_from_export(root / "export", root / "mk.omsim", "Ascend310P3", precision_mode="must_keep_origin_dtype",
                            link=False)  # a copy of the weights: the artifact stands alone
    return src, root / "export", Path(art.path)


def _where(llama, backend):
    src, export, omsim = llama
    return str({"torch": src, "mindspore": src, "onnxruntime": export, "sim": omsim, "acl": omsim}[backend])


# ---------------------------------------------------------------------------------------------
# context: checked before anything is allocated


def test_max_new_tokens_past_the_context_is_refused_up_front(llama, capsys):
    # before: the cache of 1e9 slots grew until the OOM killer ended the process
    assert cli(["generate", _where(llama, "torch"), "--prompt-ids", "1,371,260", "--max-new-tokens",
                "1000000000"]) == 2
    err = capsys.readouterr().err
    assert "prompt (3 tokens) + max_new_tokens (1000000000)" in err and "context of 256 positions" in err
    assert "at most 253" in err
    # a converted artifact: its KV cache M=48, the prompt padded to the graph's S=8
    sim = ["generate", _where(llama, "sim"), "--backend", "sim", "--prompt-ids", "1,371,260"]
    assert cli(sim + ["--max-new-tokens", "41"]) == 2
    err = capsys.readouterr().err
    assert "prompt (3 tokens, padded to 8) + max_new_tokens (41) = 49 exceed the artifact's KV cache of 48" in err
    assert cli(sim + ["--max-new-tokens", "40", "--output-ids"]) == 0


def test_the_check_runs_before_any_session_is_made(tiny_backend):
    be = tiny_backend("llama")
    made = []

    class Counting:  # the real backend; records sessions asked for
        spec = be.spec

        def new_session(self, batch, max_len):
            made.append(max_len)
            return be.new_session(batch, max_len)

    with pytest.raises(ConfigError, match="exceed the model's context of 256"):
        generate(Counting(), None, [PROMPT], GenerationConfig(max_new_tokens=10**9))
    with pytest.raises(ConfigError, match="--max-len 100000 exceeds"):
        generate(Counting(), None, [PROMPT], GenerationConfig(max_new_tokens=4, max_len=100_000))
    assert made == []
    check_context(be, 5, 251)  # exactly the context: accepted
    generate(Counting(), None, [PROMPT], GenerationConfig(max_new_tokens=4))
    assert made == [len(PROMPT) + 4]  # the cache is bounded by the validated lengths


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def test_keyboard_interrupt_between_steps_keeps_the_tokens_so_far(tiny_backend):
    be = tiny_backend("llama")
    full = generate(be, None, [PROMPT], GenerationConfig(max_new_tokens=8, stop_token_ids=()))[0].token_ids

    class InterruptAtThirdDecode:
        spec = be.spec

        def new_session(self, batch, max_len):
            s = be.new_session(batch, max_len)
            inner, calls = s.decode, []

            def decode(tok):
                calls.append(tok)
                if len(calls) == 3:
                    raise KeyboardInterrupt
                return inner(tok)

            s.decode = decode
            return s

    with pytest.raises(GenerationInterrupted) as stop:
        generate(InterruptAtThirdDecode(), None, [PROMPT], GenerationConfig(max_new_tokens=8))
    assert isinstance(stop.value, KeyboardInterrupt)
    r = stop.value.results[0]
    assert r.token_ids == full[:3] and r.finish_reason == "interrupted"


SIGINT_SCRIPT = r'''
import os, signal, sys
from ascend_adapt.backends import BACKENDS
from ascend_adapt.backends.torch.session import TorchBackend


class SigintAtThirdDecode:
    """The real torch backend; its sessions send this process a real SIGINT in the 3rd decode."""

    name = "torch"

    def __init__(self, path, **options):
        self.inner = TorchBackend(path)
        self.spec = self.inner.spec

    def new_session(self, batch, max_len):
        s = self.inner.new_session(batch, max_len)
        inner, calls = s.decode, []

        def decode(tok):
            calls.append(tok)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return inner(tok)

        s.decode = decode
        return s


BACKENDS.register("torch-sigint", SigintAtThirdDecode)
from ascend_adapt.cli.main import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("stream", [False, True])
def test_sigint_prints_what_was_generated_and_exits_130(llama, tmp_path, stream):
    src = _where(llama, "torch")
    script = tmp_path / "sigint.py"
    script.write_text(SIGINT_SCRIPT)
    from ascend_adapt.backends import get_backend

    full = generate(get_backend("torch", src), None, [PROMPT],
                    GenerationConfig(max_new_tokens=200, stop_token_ids=()))[0].token_ids
    assert len(full) == 200  # a long run that the signal must cut short
    args = ["generate", src, "--backend", "torch-sigint", "--prompt-ids", ",".join(map(str, PROMPT)),
            "--max-new-tokens", "200"] + ([] if stream else ["--output-ids"])
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 130, p.stderr
    assert "interrupted (Ctrl-C)" in p.stderr and "Traceback" not in p.stderr
    if not stream:  # the 3 tokens chosen before the signal: prefill + 2 decodes
        assert p.stdout.strip() == ",".join(str(t) for t in full[:3])


# ---------------------------------------------------------------------------------------------
# prompts: empty, ids


def test_empty_prompt_chatglm_generates_from_gmask_sop_and_is_never_silent(tiny_dir, capsys):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    # the original ChatGLM-6B encodes "" as [gMASK] <sop> and generates from there (a blank fill)
    untied = str(tiny_dir("chatglm", untied=True))
    tok = load_tokenizer(untied)
    assert tok.encode("") == [tok.gmask_id, tok.bos_id]
    assert cli(["generate", untied, "--prompt", "", "--max-new-tokens", "4", "--no-stream"]) == 0
    assert capsys.readouterr().out.strip()
    # a tied random ChatGLM answers <sop> <sop> …: before, it printed nothing and exited 0
    tied = str(tiny_dir("chatglm"))
    assert cli(["generate", tied, "--prompt", "", "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert f"the 4 new token(s) ({','.join([str(tok.bos_id)] * 4)}; finish: length) decode to no text" in err


def test_prompt_that_encodes_to_nothing_is_an_error(tiny_backend):
    class NoSpecialTokens:  # the tiny Llama with add_bos_token: false encodes "" to []
        eos_ids, pad_id, vocab_size = (2,), 0, 512

        def encode(self, text, add_special_tokens=True):
            return []

    with pytest.raises(ConfigError, match=r"prompt 2 \(''\) has no tokens"):
        generate(tiny_backend("llama"), NoSpecialTokens(), [[1, 5], ""])


@pytest.mark.parametrize("ids, words", [
    ("1,x", "'x' is not a token id"), ("1,-3", "'-3' is not a token id"), ("1,,2", "empty item"),
    (",", "has no token ids"), ("1,512", "token id 512 outside the vocabulary [0, 512)"),
])
def test_prompt_ids_are_validated(llama, capsys, ids, words):
    assert cli(["generate", _where(llama, "torch"), "--prompt-ids", ids, "--output-ids"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_prompt_and_prompt_ids_are_exclusive_and_chatglm_ids_need_sop(llama, tiny_dir, capsys):
    assert cli(["generate", _where(llama, "torch"), "--prompt", "hi", "--prompt-ids", "1,2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli(["generate", str(tiny_dir("chatglm")), "--prompt-ids", "20,30", "--output-ids"]) == 2
    assert "has no <sop>" in capsys.readouterr().err


def test_prompt_ids_need_no_tokenizer_with_output_ids(llama, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(_where(llama, "torch"), bare)
    (bare / "tokenizer.model").unlink()
    assert cli(["generate", str(bare), "--prompt-ids", "1,371,260", "--max-new-tokens", "3", "--output-ids"]) == 0
    assert len(capsys.readouterr().out.strip().split(",")) >= 1
    assert cli(["generate", str(bare), "--prompt-ids", "1,371,260"]) == 2  # text output needs the tokenizer
    assert "no tokenizer" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# --output-ids and --dump-logits on torch, onnxruntime and sim


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "sim", "acl", "mindspore"])
def test_output_ids_equal_the_python_api_tokens(llama, capsys, monkeypatch, backend):
    from ascend_adapt.backends import get_backend

    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")

    where = _where(llama, backend)
    api = generate(get_backend(backend, where), None, [PROMPT], GenerationConfig(max_new_tokens=12))[0].token_ids
    assert cli(["generate", where, "--backend", backend, "--prompt-ids", ",".join(map(str, PROMPT)),
                "--max-new-tokens", "12", "--output-ids"]) == 0
    assert capsys.readouterr().out.strip() == ",".join(str(t) for t in api)
    assert len(set(api)) > 2  # varied tokens: the comparison is not vacuous


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "sim", "acl", "mindspore"])
def test_dump_logits_is_the_prompt_logits_written_atomically(llama, tmp_path, capsys, monkeypatch, backend):
    from ascend_adapt.backends import get_backend

    monkeypatch.setenv("ASCEND_ADAPT_ACL", "fake")  # acl: the strict fake pyACL runs the artifact's graph
    where = _where(llama, backend)
    out = tmp_path / f"{backend}.npy"
    args = ["generate", where, "--backend", backend, "--prompt-ids", ",".join(map(str, PROMPT)),
            "--max-new-tokens", "2", "--output-ids", "--dump-logits", str(out)]
    assert cli(args) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(PROMPT), 512)
    # acl has no full_logits: its reference is the simulator on the same graph (must_keep_origin_dtype)
    be = get_backend("sim" if backend == "acl" else backend, where)
    full = be.full_logits(np.array([PROMPT]))[0]
    if backend in ("torch", "mindspore", "acl"):
        # a cached step vs a forward without cache, or the same fp32 graph under other onnxruntime
        # session options: two correct fp32 runs, bound 2·u·Σn·max|logits| (tests/tolerances.py)
        np.testing.assert_allclose(got, full, rtol=0, atol=fp32_atol(be.spec, np.abs(full).max(), keys=len(PROMPT)))
    else:  # the same graph on the same feeds
        np.testing.assert_array_equal(got, full)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left beside it
    before = out.read_bytes()
    assert cli(args) == 2  # refuses to overwrite …
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli(args + ["--force"]) == 0  # … unless asked


def test_dump_logits_torch_and_sim_must_keep_agree(llama, tmp_path, capsys):
    from ascend_adapt.backends import get_backend

    files = {}
    for backend in ("torch", "sim"):
        files[backend] = tmp_path / f"{backend}.npy"
        assert cli(["generate", _where(llama, backend), "--backend", backend, "--prompt-ids",
                    ",".join(map(str, PROMPT)), "--max-new-tokens", "1", "--output-ids",
                    "--dump-logits", str(files[backend])]) == 0
    golden, sim = np.load(files["torch"]), np.load(files["sim"])
    # both compute in fp32 (must_keep_origin_dtype keeps the graph's dtypes): two correct fp32
    # implementations differ by ≤ 2·u·Σn·max|logits| over the accumulation lengths of the forward
    # pass (tests/tolerances.py); keys = the cache of M=48 slots the sim graph attends over
    spec = get_backend("torch", _where(llama, "torch")).spec
    tol = fp32_atol(spec, np.abs(golden).max(), keys=48)
    err = float(np.abs(golden - sim).max())
    assert err <= tol, f"torch vs sim(must_keep_origin_dtype) prompt logits: max |Δ| {err:.3g} > {tol:.3g}"
    assert np.abs(golden).max() > 100 * tol  # the logits are far above the tolerance: not vacuous


def test_dump_logits_needs_one_prompt(llama, tmp_path, capsys):
    assert cli(["generate", _where(llama, "torch"), "--prompt-ids", "1,2", "--prompt-ids", "1,3",
                "--dump-logits", str(tmp_path / "x.npy")]) == 2
    assert "one prompt" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()
