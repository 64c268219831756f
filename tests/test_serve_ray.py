"""`ascend-adapt serve --devices 0,1`: two Ray Serve replicas of tiny Llama-2 on the simulator, one
per device id, behind Ray Serve's HTTP proxy, started once for the module as the CLI runs it.

Through the real `openai` client: greedy completions and chat, streamed and not, equal
`ascend-adapt generate --output-ids` token for token; requests spread over both replicas (the
`X-Ascend-Device` header of each answer, and each replica's `/metrics` labelled by device count
exactly the tokens of the answers that name it); errors keep OpenAI's shape; SIGTERM drains the
streams in flight and the command exits 0.

Ray that cannot start fails these tests; only a missing `ray` package skips them (the no-ray
error and the option checks run without it).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from ascend_adapt.cli.main import main as cli  # noqa: E402

B, S, M = 2, 32, 288  # per replica: 2 rows; up to 256 new tokens (the drain test's long streams)
MAX_TOKENS = 24
DEVICES = ("0", "1")
PROMPTS = ["hello world", "the quick brown fox jumps", "a", "over the lazy dog and the cat"]
CHATS = ["hi there", "tell me about the fox"]
START_S = 180  # Ray + two replicas on a loaded 2-core machine (about 15 s when idle)


@pytest.fixture(scope="module")
def artifact(tiny_dir, tmp_path_factory) -> Path:
    """The tiny Llama as an .omsim with B=2, S=32, M=288."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    root = tmp_path_factory.mktemp("serve-ray")
    build_llm_onnx(tiny_dir("llama"), root / "export", batch=B, seq_len=S, max_len=M, target="Ascend310P3",
                   progress=False)
    return Path(omsim_from_export(root / "export", root / "m.omsim", "Ascend310P3", link=False).path)


class Server:
    """The `ascend-adapt serve --devices 0,1` process: its URL and its stderr lines with arrival times."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log, self.url = proc, log, None
        self.lines: list[tuple[float, str]] = []

    def read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def tail(self, n: int = 40) -> str:
        return "".join(line for _, line in self.lines[-n:])


@pytest.fixture(scope="module")
def server(artifact, tmp_path_factory):
    pytest.importorskip("ray")  # a missing ray skips; a ray that cannot start fails below
    log = tmp_path_factory.mktemp("serve-ray-log") / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "ascend_adapt", "serve", str(artifact), "--devices", ",".join(DEVICES),
                             "--port", "0", "--model-name", "tiny", "--request-log", str(log), "--graceful-timeout",
                             "60"], stderr=subprocess.PIPE, text=True)
    srv = Server(proc, log)
    threading.Thread(target=srv.read, daemon=True).start()
    try:
        deadline = time.monotonic() + START_S
        while srv.url is None:
            ready = [line for _, line in srv.lines if line.startswith("serving")]
            if ready:
                srv.url = ready[0].rsplit(" on ", 1)[1].strip()
                assert "2 Ray Serve replicas on devices 0,1" in ready[0] and f"{B} rows each" in ready[0], ready[0]
                break
            assert proc.poll() is None, f"serve --devices exited with {proc.returncode}:\n{srv.tail()}"
            assert time.monotonic() < deadline, f"serve --devices did not start in {START_S} s:\n{srv.tail()}"
            time.sleep(0.1)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def generate_batch(art, prompts: list[str], *extra: str, n: int = MAX_TOKENS) -> list[list[int]]:
    """`ascend-adapt generate --output-ids` for B prompts at a time; each prompt's ids."""
    import contextlib
    import io

    out = []
    for i in range(0, len(prompts), B):
        rows = prompts[i:i + B] + [prompts[i:i + B][-1]] * (B - len(prompts[i:i + B]))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            code = cli(["generate", str(art), "--backend", "sim", "--max-new-tokens", str(n), "--output-ids", *extra]
                       + [a for p in rows for a in ("--prompt", p)])
        assert code == 0
        lines = buf.getvalue().split()
        assert len(lines) == B
        out += [[int(t) for t in line.split(",")] for line in lines[:len(prompts[i:i + B])]]
    return out


def ask(url: str, prompt: str, chat: bool, stream: bool, **kw) -> tuple[list[int], str, str]:
    """One greedy request through the openai client: (token ids, finish reason, device header)."""
    c = client(url)
    args = {"model": "tiny", "max_tokens": MAX_TOKENS, "temperature": 0, **kw}
    api = c.chat.completions if chat else c.completions
    what = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    if stream:
        ids, finish = [], None
        with api.with_streaming_response.create(stream=True, **what, **args) as resp:
            device = resp.headers.get("x-ascend-device")
            for ch in resp.parse():
                if ch.choices:
                    ids += (ch.choices[0].model_extra or {}).get("token_ids", [])
                    finish = ch.choices[0].finish_reason or finish
        return ids, finish, device
    raw = api.with_raw_response.create(**what, **args)
    r = raw.parse()
    return r.choices[0].model_extra["token_ids"], r.choices[0].finish_reason, raw.headers.get("x-ascend-device")


def scrape(url: str) -> dict[str, str]:
    """device → that replica's /metrics text, one scrape per replica (the proxy picks the replica at
    random between two idle ones: 200 tries leave both unseen with probability 2^-199)."""
    got = {}
    for _ in range(200):
        r = httpx.get(f"{url}/metrics", timeout=30)
        assert r.status_code == 200
        got.setdefault(r.headers["x-ascend-device"], r.text)
        if len(got) == len(DEVICES):
            return got
    raise AssertionError(f"/metrics answered only from devices {sorted(got)}")


def metric(text: str, name: str, device: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'device="{device}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{device={device!r}}} is not in the exposition")


# ---------------------------------------------------------------------------------------------


def test_greedy_answers_equal_generate_across_two_replicas(server, artifact):
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    jobs = [(p, False, s) for p in PROMPTS for s in (False, True)] + [(p, True, s) for p in CHATS for s in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:  # 12 at once over 2 replicas × 2 rows
        got = list(pool.map(lambda j: ask(server.url, *j), jobs))
    wants = dict(zip(PROMPTS, generate_batch(artifact, PROMPTS)))
    chats = dict(zip(CHATS, generate_batch(artifact, CHATS, "--chat")))
    eos = load_tokenizer(artifact).eos_ids
    for (prompt, chat, stream), (ids, finish, _) in zip(jobs, got):
        want = (chats if chat else wants)[prompt]
        assert ids == want, f"{'chat' if chat else 'completion'} stream={stream} {prompt!r}"
        assert finish == ("stop" if want[-1] in eos else "length")
    assert len({tuple(g[0]) for g in got}) > 2  # varied answers: the comparison is not vacuous
    assert {g[2] for g in got} == set(DEVICES)  # both replicas answered


def test_each_replica_counts_its_own_requests_in_its_metrics(server):
    before = scrape(server.url)
    jobs = [(p, False, True) for p in PROMPTS * 2]
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: ask(server.url, *j), jobs))
    after = scrape(server.url)
    by_device = {d: sum(len(ids) for ids, _, dev in got if dev == d) for d in DEVICES}
    assert all(by_device.values()), by_device  # spread over both replicas
    name = "ascend_adapt_generated_tokens_total"
    for d in DEVICES:
        # counters of this replica only: exactly the tokens of the answers that named it
        assert metric(after[d], name, d) - metric(before[d], name, d) == by_device[d], d
        assert metric(after[d], "ascend_adapt_batch_rows", d) == B
        assert f'device="{d}"' in after[d] and not any(f'device="{o}"' in after[d] for o in DEVICES if o != d)
    health = {}
    for _ in range(200):
        h = httpx.get(f"{server.url}/health", timeout=30)
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["batch"] == B
        health[h.json()["device"]] = h.headers["x-ascend-device"]
        if len(health) == 2:
            break
    assert health == {d: d for d in DEVICES}
    recs = [json.loads(x) for x in server.log.read_text().splitlines()]
    assert {r["device"] for r in recs} == set(DEVICES)
    assert [m.id for m in client(server.url).models.list().data] == ["tiny"]


def test_errors_keep_the_openai_shape(server):
    c = client(server.url)
    with pytest.raises(openai.BadRequestError) as e:  # prompt fits, prompt + max_tokens does not
        c.completions.create(model="tiny", prompt="hello", max_tokens=M)
    err = e.value.response.json()["error"]
    assert err["code"] == "context_length_exceeded" and f"context is {M} tokens" in err["message"]
    assert e.value.response.headers["x-ascend-device"] in DEVICES
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert e.value.response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="hello", max_tokens=4, temperature=3)
    assert e.value.response.json()["error"]["param"] == "temperature"
    r = httpx.post(f"{server.url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_sigterm_drains_the_streams_in_flight_then_exits_0(server, artifact):
    """12 long streams over 2 replicas × 2 rows (3 rounds of 256 decode steps per replica); SIGTERM
    after the first chunk: every stream ends whole, some after the drain began."""
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer

    eos = load_tokenizer(artifact).eos_ids
    n = M - S
    first = threading.Event()
    signalled: list[float] = []

    def stream(i: int):
        body = {"model": "tiny", "prompt": f"{PROMPTS[i % 4]} {i}", "max_tokens": n, "temperature": 0,
                "stream": True}
        ids, finish, done_at = [], None, None
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                first.set()
                if line == "data: [DONE]":
                    done_at = time.monotonic()
                    break
                c = json.loads(line[6:])["choices"][0]
                ids += c["token_ids"]
                finish = c["finish_reason"] or finish
        return ids, finish, done_at

    with ThreadPoolExecutor(12) as pool:
        futs = [pool.submit(stream, i) for i in range(12)]
        assert first.wait(120)
        server.proc.send_signal(signal.SIGTERM)  # mid-stream
        signalled.append(time.monotonic())
        results = [f.result() for f in futs]
    # every answer whole, after the signal: its max_tokens, or an end-of-sequence token
    for ids, finish, done_at in results:
        assert done_at is not None, (len(ids), finish)
        assert (finish, len(ids)) == ("length", n) or (finish == "stop" and ids[-1] in eos), (len(ids), finish)
    assert server.proc.wait(120) == 0, server.tail()
    drain = [t for t, line in server.lines if "finishing the requests in flight" in line]
    assert drain, server.tail()
    # not vacuous: streams were still running when the drain began
    assert sum(1 for _, _, t in results if t is not None and t > drain[0]) >= 1, (drain[0] - signalled[0], results)
    assert any("stopped by signal 15 after finishing the requests in flight" in line for _, line in server.lines)


# ------------------------------------------------------------------------- without a Ray start


def test_without_ray_the_error_names_the_extra(artifact):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from ascend_adapt.cli.main import main\n"
            f"sys.exit(main(['serve', {str(artifact)!r}, '--devices', '0,1', '--port', '0']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "'ray'" in out.stderr and "pip install 'ascend-adapt[serve]'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("argv, says", [
    (["--devices", "0,0"], "device 0 is listed twice"),
    (["--devices", "0,x"], "'x' is not a device id"),
    (["--devices", ""], "--devices is empty"),
    (["--backend", "acl", "--device-id", "1", "--devices", "0,1"], "--device-id and --devices exclude each other"),
])
def test_devices_option_is_checked_before_ray_starts(artifact, capsys, argv, says):
    assert cli(["serve", str(artifact), "--port", "0", *argv]) == 2
    assert says in capsys.readouterr().err


def test_a_streamed_chunk_stays_one_line_for_any_line_splitter():
    """A token whose text holds U+2028 / U+0085 (the tiny Llama's streams meet some): SSE splits
    lines at CR / LF only, but httpx's `iter_lines` (str.splitlines) splits there too."""
    from httpx._decoders import LineDecoder

    from ascend_adapt.serve.app import sse_event

    body = {"choices": [{"text": "a\u2028b\x85c\u2029d é", "token_ids": [5]}]}
    lines = [x for x in LineDecoder().decode(sse_event(body)) + LineDecoder().flush() if x]
    assert len(lines) == 1 and json.loads(lines[0][len("data: "):]) == body
    assert "é" in lines[0]  # other text stays UTF-8


def test_a_replica_that_fails_to_start_is_reported_with_its_own_error():
    """What Ray Serve's status says of a deployment whose replica constructor raised (the shape
    of ray 2.60's message): the replica's AscendAdaptError and its fix come out."""
    from ascend_adapt.serve.ray_app import startup_error

    status = ("The deployment failed to start 3 times in a row. This may be due to a problem with its constructor "
              "or initial health check failing. See controller logs for details. Error:\n"
              "ray::ServeReplica:ascend-adapt:replicas.initialize_and_get_metadata() (pid=1, ip=127.0.0.1)\n"
              "RuntimeError: Traceback (most recent call last):\n"
              '  File "ascend_adapt/serve/rows.py", line 245, in make_rows\n'
              "ascend_adapt.errors.ConfigError: --batch 3: m.omsim was built for batch 2\n"
              "  fix: leave --batch out, or re-convert with --batch 3\n")
    err = startup_error(status)
    assert err.message == "a Ray Serve replica did not start: --batch 3: m.omsim was built for batch 2"
    assert err.hint == "leave --batch out, or re-convert with --batch 3"
    other = startup_error("RuntimeError: Traceback (most recent call last):\n  File x\nMemoryError: out of memory\n")
    assert "MemoryError: out of memory" in other.message and "without --devices" in other.hint


def test_serve_load_prose_names_the_replicas():
    """tools/bench/serve_load.py --devices: the section says the load went to Ray Serve replicas."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "bench"))
    import serve_load

    phase = {"wall_s": 10.0, "tokens": 1000, "lost": 0, "lost_reasons": [], "tokens_per_s": 100.0,
             "ttft_s": {"p50": 0.1, "p99": 0.2}, "tpot_s": {"p50": 0.01, "p99": 0.02}}
    f = {"n": 200, "concurrency": 16, "batch": 4, "max_tokens": 48, "model": "m", "rounds": 5, "devices": "0,1",
         "one_at_a_time": phase, "load": {**phase, "tokens_per_s": 300.0}, "equal_answers": 200, "speedup": 3.0}
    text = serve_load.prose(f)
    assert "`ascend-adapt serve --devices 0,1` (2 Ray Serve replicas, B = 4 rows each)" in text
    assert "with 16 clients and 2 × 4 rows" in text
    assert "`ascend-adapt serve` with B = 4 rows" in serve_load.prose({**f, "devices": None})
