"""`ascend-adapt serve` as a process and its engine without HTTP: graceful shutdown drains what is
in flight, the CLI refuses bad options with a clear error, the torch backend serves rows as
batch-1 sessions that answer like `generate`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from ascend_adapt.cli.main import main as cli  # noqa: E402

B, S, M = 2, 16, 96


@pytest.fixture(scope="module")
def llama(tiny_dir, tmp_path_factory):
    """(checkpoint, .omsim) of the tiny Llama with B=2, S=16, M=96."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    src = tiny_dir("llama")
    root = tmp_path_factory.mktemp("serve-cli")
    build_llm_onnx(src, root / "export", batch=B, seq_len=S, max_len=M, target="Ascend310P3", progress=False)
    return src, Path(omsim_from_export(root / "export", root / "m.omsim", "Ascend310P3", link=False).path)


def test_sigterm_finishes_the_stream_in_flight_then_exits_0(llama, tmp_path):
    _, art = llama
    log = tmp_path / "requests.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "ascend_adapt", "serve", str(art), "--port", "0", "--model-name",
                          "t", "--request-log", str(log)], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None:
            line = p.stderr.readline()
            assert line and time.monotonic() < deadline, "the server did not start"
            if line.startswith("serving"):
                url = line.rsplit(" on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        body = {"model": "t", "prompt": "hello", "max_tokens": M - S, "temperature": 0, "stream": True}
        n, finish, signalled = 0, None, False
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if not signalled:
                    p.send_signal(signal.SIGTERM)  # mid-stream
                    signalled = True
                if line == "data: [DONE]":
                    break
                c = json.loads(line[6:])["choices"][0]
                n += len(c["token_ids"])
                finish = c["finish_reason"] or finish
        assert (n, finish) == (M - S, "length")  # the whole answer, after the signal
        assert p.wait(60) == 0
        rec = json.loads(log.read_text().splitlines()[-1])
        assert rec["completion_tokens"] == M - S and rec["finish_reason"] == "length" and rec["stream"]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_engine_drains_waiting_and_running_requests_then_refuses(llama):
    from ascend_adapt.backends import get_backend
    from ascend_adapt.serve.engine import DrainingError, Engine, Request
    from ascend_adapt.serve.rows import make_rows

    _, art = llama
    done = []
    engine = Engine(make_rows(get_backend("sim", art)), None, max_queue=8, eos_ids=()).start()
    reqs = [engine.submit(Request(prompt_ids=[1, 10 + i, 20], max_tokens=12,
                                  on_event=lambda k, d: done.append(d) if k == "done" else None)) for i in range(5)]
    assert engine.shutdown(drain=True, timeout_s=60)  # 5 requests over 2 rows: some still queued here
    assert [len(r.token_ids) for r in reqs] == [12] * 5 and len(done) == 5
    with pytest.raises(DrainingError):
        engine.submit(Request(prompt_ids=[1, 2], max_tokens=2))


def test_cli_refuses_a_batch_the_graphs_were_not_built_for(llama, capsys):
    _, art = llama
    assert cli(["serve", str(art), "--batch", "3", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "built for batch 2" in err and "--batch" in err
    assert cli(["serve", str(art), "--dtype", "float16"]) == 2  # a torch option on the sim backend
    assert "--dtype applies to --backend torch" in capsys.readouterr().err


def test_cli_names_a_port_in_use(llama, capsys):
    import socket

    _, art = llama
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli(["serve", str(art), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_torch_rows_answer_like_generate(llama):
    pytest.importorskip("torch")
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import GenerationConfig, generate
    from ascend_adapt.serve.engine import Engine, Request
    from ascend_adapt.serve.rows import SessionRows, make_rows

    src, _ = llama
    be = get_backend("torch", src)
    tok = load_tokenizer(src)
    rows = make_rows(be, 2)
    assert isinstance(rows, SessionRows) and rows.max_len == be.spec.max_position
    engine = Engine(rows, tok).start()
    prompts = ["hello world", "the quick brown fox", "a", "over the lazy dog"]
    reqs = [engine.submit(Request(prompt_ids=tok.encode(p), max_tokens=10)) for p in prompts]
    assert engine.shutdown(drain=True, timeout_s=120)
    for p, r in zip(prompts, reqs):
        want = generate(be, tok, [p], GenerationConfig(max_new_tokens=10))[0]
        assert r.token_ids == want.token_ids and r.text == want.text
    assert len({tuple(r.token_ids) for r in reqs}) > 1


def test_gear_build_rows_answer_like_generate(tiny_dir, tmp_path):
    """A step graph (convert's default layout): each refill is prefilled at its prompt's gear, as
    `generate` pads one prompt; requests of different gears share the batch."""
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx
    from ascend_adapt.backends import get_backend
    from ascend_adapt.runtime.generate import GenerationConfig, generate
    from ascend_adapt.serve.engine import Engine, Request
    from ascend_adapt.serve.rows import GraphRows, make_rows

    src = tiny_dir("llama")
    build_llm_onnx(src, tmp_path / "export", batch=B, seq_len=32, max_len=M, target="Ascend310P3", progress=False,
                   gears=[8, 16, 32])
    be = get_backend("sim", omsim_from_export(tmp_path / "export", tmp_path / "g.omsim", "Ascend310P3",
                                              link=False).path)
    tok = load_tokenizer(src)
    rows = make_rows(be)
    assert isinstance(rows, GraphRows) and rows.gears == [1, 8, 16, 32]
    prompts = ["a", "hello world", "the quick brown fox jumps over", "over the lazy dog and the cat"]
    assert len({rows.gear_for(len(tok.encode(p))) for p in prompts}) >= 2  # several gears in one batch
    wants = [generate(be, tok, [p] * B, GenerationConfig(max_new_tokens=12))[0].token_ids for p in prompts]
    engine = Engine(rows, tok).start()
    reqs = [engine.submit(Request(prompt_ids=tok.encode(p), max_tokens=12)) for p in prompts]
    assert engine.shutdown(drain=True, timeout_s=120)  # (closes the backend)
    assert [r.token_ids for r in reqs] == wants
    assert rows.steps["prefill"] >= 2


def test_without_the_serve_extra_the_error_names_it(llama):
    _, art = llama
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from ascend_adapt.cli.main import main\n"
            f"sys.exit(main(['serve', {str(art)!r}, '--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "fastapi" in out.stderr and "ascend-adapt[serve]" in out.stderr
    assert "Traceback" not in out.stderr


def test_refills_happen_between_decode_steps_one_prefill_at_a_time(llama):
    """Rows finish at different steps (different max_tokens); each free row is refilled by one
    prefill step between two decode steps while the other row keeps its place."""
    from ascend_adapt.backends import get_backend
    from ascend_adapt.serve.engine import Engine, Request
    from ascend_adapt.serve.rows import GraphRows

    class TracedRows(GraphRows):  # the real rows, recording the order of the steps
        trace = ""

        def prefill(self, prompts):
            self.trace += "P"
            return super().prefill(prompts)

        def decode(self, tokens):
            self.trace += f"D{len(tokens)}"
            return super().decode(tokens)

    _, art = llama
    rows = TracedRows(get_backend("sim", art))
    engine = Engine(rows, None, eos_ids=())
    reqs = [engine.submit(Request(prompt_ids=[1, 30 + i, 40], max_tokens=n)) for i, n in enumerate((3, 9, 4, 6, 5))]
    engine.start()
    assert engine.shutdown(drain=True, timeout_s=60)
    assert [len(r.token_ids) for r in reqs] == [3, 9, 4, 6, 5]
    t = rows.trace
    assert t.startswith("PD2") and "PP" not in t  # never two prefills in a row: one gear's stall at most
    assert "D2PD2" in t  # a row refilled while the other kept decoding
    assert t.count("P") == 4  # 5 requests over 2 rows: the first prefill filled both
