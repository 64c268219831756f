"""`ascend-adapt serve`: the OpenAI API through the real `openai` client against a uvicorn server
on 127.0.0.1 started here, over tiny Llama-2 / ChatGLM-6B artifacts on the simulator (B = 4).

Greedy answers (streamed or not, completions and chat) equal `ascend-adapt generate --output-ids`
token for token while requests share the batch and rows are refilled; sampling with a seed equals
`generate --sample --seed`; errors have OpenAI's shape; a client that goes away frees its row.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")

from ascend_adapt.cli.main import main as cli  # noqa: E402
from ascend_adapt.serve.engine import _first_stop, _safe_prefix  # noqa: E402

B, S, M = 4, 32, 256
MAX_TOKENS = 24
PROMPTS = {"llama": ["hello world", "the quick brown fox jumps", "a", "over the lazy dog and the cat"],
           "chatglm": ["hello world", "你好", "the quick brown fox jumps", "a b c"]}
CHATS = {"llama": ["hi there", "tell me about the fox"], "chatglm": ["你好", "hello there"]}


@pytest.fixture(scope="module")
def artifacts(tiny_dir, tmp_path_factory):
    """{arch: .omsim dir} of B=4, S=32, M=256 tiny models (ChatGLM untied: varied greedy tokens)."""
    from ascend_adapt.backends.sim.artifact import omsim_from_export
    from ascend_adapt.om_convert.builder import build_llm_onnx

    root = tmp_path_factory.mktemp("serve")
    out = {}
    for arch in ("llama", "chatglm"):
        src = tiny_dir(arch, untied=arch == "chatglm")
        build_llm_onnx(src, root / arch / "export", batch=B, seq_len=S, max_len=M, target="Ascend310P3",
                       progress=False)
        out[arch] = Path(omsim_from_export(root / arch / "export", root / arch / "m.omsim", "Ascend310P3",
                                           link=False).path)
    return out


@contextmanager
def running(served, lifespan: str = "on"):
    """A uvicorn server on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    from ascend_adapt.serve.server import bind, uvicorn_server

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn_server(served.app, graceful_s=10, log_level="warning", lifespan=lifespan)
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert th.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(60)


@pytest.fixture(scope="module")
def servers(artifacts, tmp_path_factory):
    """{arch: (base URL, Served)} — one server per tiny model for the module."""
    from contextlib import ExitStack

    from ascend_adapt.serve.server import build

    log_dir = tmp_path_factory.mktemp("serve-logs")
    with ExitStack() as stack:
        out = {}
        for arch, art in artifacts.items():
            served = build(str(art), "sim", model_name=f"tiny-{arch}", request_log=str(log_dir / f"{arch}.jsonl"))
            out[arch] = (stack.enter_context(running(served)), served)
        out["logs"] = log_dir
        yield out


def client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def generate_ids(art, prompt: str, *extra: str, n: int = MAX_TOKENS) -> list[int]:
    """`ascend-adapt generate --output-ids` for one prompt (repeated over the graphs' B rows; row 0's
    answer: a sampled row b draws from the generator seeded (seed, b), one prompt alone from (seed, 0))."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["generate", str(art), "--backend", "sim", "--max-new-tokens", str(n), "--output-ids", *extra]
                   + [a for _ in range(B) for a in ("--prompt", prompt)])
    assert code == 0
    lines = buf.getvalue().split()
    assert len(lines) == B
    if "--sample" not in extra:
        assert len(set(lines)) == 1  # greedy: every row of generate's batch gives the same answer
    return [int(t) for t in lines[0].split(",")]


def generate_batch(art, prompts: list[str], *extra: str, n: int = MAX_TOKENS) -> list[list[int]]:
    """`ascend-adapt generate --output-ids` for up to B prompts in one batch (the last one repeated to
    fill the graphs' B rows); each prompt's ids."""
    import contextlib
    import io

    rows = list(prompts) + [prompts[-1]] * (B - len(prompts))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["generate", str(art), "--backend", "sim", "--max-new-tokens", str(n), "--output-ids", *extra]
                   + [a for p in rows for a in ("--prompt", p)])
    assert code == 0
    lines = buf.getvalue().split()
    assert len(lines) == B
    return [[int(t) for t in line.split(",")] for line in lines[:len(prompts)]]


def _stream(stream, chat: bool) -> tuple[str, list[int], str]:
    text, ids, finish = "", [], None
    for ch in stream:
        if not ch.choices:
            continue
        c = ch.choices[0]
        text += (c.delta.content or "") if chat else c.text
        ids += (c.model_extra or {}).get("token_ids", [])
        finish = c.finish_reason or finish
    return text, ids, finish


def _ask(url, arch, prompt, chat: bool, stream: bool, **kw):
    c = client(url)
    args = {"model": f"tiny-{arch}", "max_tokens": MAX_TOKENS, "temperature": 0, **kw}
    if chat:
        r = c.chat.completions.create(messages=[{"role": "user", "content": prompt}], stream=stream, **args)
        if stream:
            return _stream(r, True)
        return r.choices[0].message.content, r.choices[0].model_extra["token_ids"], r.choices[0].finish_reason
    r = c.completions.create(prompt=prompt, stream=stream, **args)
    if stream:
        return _stream(r, False)
    return r.choices[0].text, r.choices[0].model_extra["token_ids"], r.choices[0].finish_reason


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "chatglm"])
def test_greedy_answers_equal_generate_under_continuous_batching(servers, artifacts, arch):
    url, served = servers[arch]
    tok = served.tokenizer
    jobs = [(p, False, s) for p in PROMPTS[arch] for s in (False, True)]
    jobs += [(p, True, s) for p in CHATS[arch] for s in (False, True)]
    steps0 = dict(served.engine.rows.steps)
    # 12 requests at once over 4 rows: rows are refilled while others decode
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: _ask(url, arch, j[0], j[1], j[2]), jobs))
    # generate's answers: one batch per kind (two-graph layout: every row is padded to S, so a row's
    # answer does not depend on its neighbours)
    wants = dict(zip(PROMPTS[arch], generate_batch(artifacts[arch], PROMPTS[arch])))
    chats = dict(zip(CHATS[arch], generate_batch(artifacts[arch], CHATS[arch], "--chat")))
    total_tokens = 0
    for (prompt, chat, stream), (text, ids, finish) in zip(jobs, got):
        want = (chats if chat else wants)[prompt]
        assert ids == want, f"{arch} {'chat' if chat else 'completion'} stream={stream} {prompt!r}"
        stopped = want[-1] in tok.eos_ids
        assert finish == ("stop" if stopped else "length")
        assert text == tok.decode(want[:-1] if stopped else want)
        total_tokens += len(ids)
    assert len({tuple(g[1]) for g in got}) > 2  # varied answers: the comparison is not vacuous
    steps = {k: served.engine.rows.steps[k] - steps0[k] for k in steps0}
    # batched: far fewer decode steps than tokens (one at a time would take total - requests steps)
    assert steps["decode"] < (total_tokens - len(jobs)) / 2, (steps, total_tokens)


def test_sampling_with_a_seed_equals_generate_sample(servers, artifacts):
    url, _ = servers["llama"]
    kw = dict(temperature=0.8, top_p=0.9, seed=7)
    _, ids, _ = _ask(url, "llama", "hello world", False, False, **kw)
    _, again, _ = _ask(url, "llama", "hello world", False, True, **kw)
    want = generate_ids(artifacts["llama"], "hello world", "--sample", "--temperature", "0.8", "--top-p", "0.9",
                        "--seed", "7")
    assert ids == want and again == want
    _, other, _ = _ask(url, "llama", "hello world", False, False, temperature=0.8, top_p=0.9, seed=8)
    assert other != want  # the seed matters


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text_before_them(servers, stream):
    url, _ = servers["llama"]
    full, _, _ = _ask(url, "llama", "the quick brown fox jumps", False, False)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip() and len(full) > 6
    text, ids, finish = _ask(url, "llama", "the quick brown fox jumps", False, stream, stop=[stop, "\u0000zz"])
    assert finish == "stop" and text == full[:full.index(stop)] and stop not in text
    assert len(ids) < MAX_TOKENS


def test_stop_helpers():
    assert _first_stop("abc</s>def", ["</s>", "de"]) == 3
    assert _first_stop("abc", ["x"]) is None
    assert _safe_prefix("hello wor", ["world"]) == "hello "  # "wor" may grow into the stop string
    assert _safe_prefix("hello w\ufffd", []) == "hello w"  # an incomplete UTF-8 sequence waits


def _error(exc) -> dict:
    return exc.value.response.json()["error"]


def test_errors_have_the_openai_shape(servers):
    url, served = servers["llama"]
    c = client(url)
    with pytest.raises(openai.BadRequestError) as e:  # longer than the prefill graph
        c.completions.create(model="tiny-llama", prompt="hello " * 100, max_tokens=4)
    err = _error(e)
    assert err["code"] == "context_length_exceeded" and "context" in err["message"]
    assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:  # prompt fits, prompt + max_tokens does not
        c.completions.create(model="tiny-llama", prompt="hello", max_tokens=M)
    err = _error(e)
    assert err["code"] == "context_length_exceeded" and f"context is {M} tokens" in err["message"]
    assert f"at most {M - S}" in err["message"]
    with pytest.raises(openai.NotFoundError) as e:
        c.completions.create(model="gpt-4", prompt="hello", max_tokens=4)
    assert _error(e)["code"] == "model_not_found"
    for bad in (dict(temperature=3), dict(top_p=0), dict(n=2), dict(max_tokens=0), dict(seed=-1)):
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny-llama", prompt="hello", **{"max_tokens": 4, **bad})
        assert _error(e)["param"] == next(iter(bad)), bad
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny-llama", messages=[{"role": "assistant", "content": "x"}])
    assert "user" in _error(e)["message"]
    r = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert served.engine.failed is None


def test_chatglm_has_no_system_message(servers):
    url, _ = servers["chatglm"]
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="tiny-chatglm", messages=[
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert "system" in _error(e)["message"]


def test_full_queue_is_a_429_with_retry_after(artifacts):
    from ascend_adapt.serve.engine import Request
    from ascend_adapt.serve.server import build

    served = build(str(artifacts["llama"]), "sim", model_name="q", max_queue=2)
    # lifespan off: the engine's scheduler is not started, so what is queued stays queued
    with running(served, lifespan="off") as url:
        for _ in range(2):
            served.engine.submit(Request(prompt_ids=[1, 5, 6], max_tokens=4))
        r = httpx.post(f"{url}/v1/completions", json={"model": "q", "prompt": "hello", "max_tokens": 4})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full" and "queue is full" in r.json()["error"]["message"]
        with pytest.raises(openai.RateLimitError):
            client(url).completions.create(model="q", prompt="hello", max_tokens=4)
        assert len(served.engine.waiting) == 2
    served.engine.rows.close()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or name.endswith("}"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_disconnects_frees_its_row(servers):
    url, served = servers["llama"]
    cancelled = 'ascend_adapt_requests_finished_total{finish_reason="cancelled"}'
    before = _metric(url, cancelled)
    body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": M - S, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", f"{url}/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # one chunk, then the client goes away
    deadline = time.monotonic() + 20
    while _metric(url, cancelled) < before + 1:
        assert time.monotonic() < deadline, "the cancelled request was not counted"
        time.sleep(0.05)
    while _metric(url, "ascend_adapt_running_rows") != 0:
        assert time.monotonic() < deadline, "the row was not freed"
        time.sleep(0.05)
    recs = [json.loads(x) for x in Path(servers["logs"], "llama.jsonl").read_text().splitlines()]
    gone = [r for r in recs if r["finish_reason"] == "cancelled"]
    assert gone and gone[-1]["stream"] and gone[-1]["completion_tokens"] < M - S


def test_health_metrics_and_request_log(servers, tmp_path):
    url, served = servers["chatglm"]
    h = httpx.get(f"{url}/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["batch"] == B
    _ask(url, "chatglm", "hello world", False, False)
    text = httpx.get(f"{url}/metrics").text
    for name in ("ascend_adapt_queue_length", "ascend_adapt_running_rows", "ascend_adapt_ttft_seconds_count",
                 "ascend_adapt_tpot_seconds_count", "ascend_adapt_tokens_per_second",
                 "ascend_adapt_generated_tokens_total"):
        assert name in text, name
    assert _metric(url, "ascend_adapt_generated_tokens_total") >= MAX_TOKENS
    models = client(url).models.list().data
    assert [m.id for m in models] == ["tiny-chatglm"]
