"""The OpenAI-compatible HTTP API (FastAPI) over an `Engine`.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (streaming as
server-sent events with `"stream": true`), `GET /health`, `GET /metrics` (Prometheus text).

Request fields: `model` (must be the served name), `prompt` (a string or a list of token ids; one
prompt per request) / `messages`, `max_tokens` (completions: 16 as OpenAI; chat: the room left in
the context), `stop` (a string or a list), `temperature` (0 = greedy; OpenAI's default 1.0
samples), `top_p`, `seed`, `stream`, `stream_options.include_usage`, and two extensions
`top_k`, `repetition_penalty`. Each choice also carries `token_ids` (extension): the generated
ids, the stop token included, as `ascend-adapt generate --output-ids` prints them.

Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: a prompt past the
context is a 400 (`context_length_exceeded`) that says so, a full queue a 429 with Retry-After, a
server that drains for shutdown a 503 with Retry-After.
"""


import asyncio
import json
import os
import time
import uuid
from typing import Any

from ascend_adapt.errors import AscendAdaptError, ConfigError

from .engine import ContextLengthError, DrainingError, Engine, QueueFullError, Request


DISCONNECT_POLL_S = 0.05  # how often an open request checks that its client is still there


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def _error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}


def _text(exc: BaseException) -> str:
    """An error's message and fix on one line."""
    msg, hint = getattr(exc, "message", str(exc)), getattr(exc, "hint", None)
    return f"{msg} (fix: {hint})" if hint else msg


def _from_engine_error(exc: AscendAdaptError) -> ApiError:
    if isinstance(exc, QueueFullError):
        return ApiError(429, _text(exc), "rate_limit_error", code="queue_full",
                        headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, DrainingError):
        return ApiError(503, _text(exc), "server_error", code="shutting_down", headers={"Retry-After": "5"})
    if isinstance(exc, ContextLengthError):
        return ApiError(400, _text(exc), code="context_length_exceeded")
    if isinstance(exc, ConfigError):
        return ApiError(400, _text(exc))
    return ApiError(500, _text(exc), "server_error")


def create_app(engine: Engine, tokenizer, model_name: str, request_log: str | None = None,
               labels: dict[str, str] | None = None):
    """The FastAPI application serving `engine` under the model id `model_name`.

    Args:
        engine: a started (or startable) `Engine`; the app starts it and drains it on shutdown.
        tokenizer: the model's tokenizer (encode / decode / build_chat_prompt).
        model_name: the id `/v1/models` lists and requests must name.
        request_log: a file to append one JSON line per finished request to (None: the log only).
        labels: what this server is among several (a Ray Serve replica: {"device": "0"}); added to
            the `/health` body and to each request-log line (the metrics carry them too, see
            `ServeMetrics`).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    created = int(time.time())
    vocab = int(getattr(tokenizer, "vocab_size", 0) or getattr(engine.rows.spec, "vocab_size", 0))

    @asynccontextmanager
    async def lifespan(app):
        if engine._thread is None:
            engine.start()
        yield
        # uvicorn has stopped accepting connections and waited for the open responses; finish the rest
        await asyncio.get_running_loop().run_in_executor(None, engine.shutdown, True)

    app = FastAPI(title="ascend-adapt serve", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(_error_body(exc), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug, still in OpenAI's shape
        import logging

        logging.getLogger("ascend_adapt.serve").exception("unexpected error")
        return JSONResponse(_error_body(ApiError(500, f"internal error: {type(exc).__name__}: {exc}",
                                                 "server_error")), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid request"))
        return JSONResponse(_error_body(ApiError(400, msg, param=where)), status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "ascend-adapt", "max_model_len": engine.rows.max_len}]}

    @app.get("/health")
    async def health():
        body = {"status": "draining" if engine.draining else ("failed" if engine.failed else "ok"),
                "queued": len(engine.waiting), "running": len(engine.running), "batch": engine.rows.batch,
                **(labels or {})}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics():
        if engine.metrics is None:
            raise ApiError(404, "metrics are off", "not_found_error")
        body, ctype = engine.metrics.text()
        return Response(body, media_type=ctype)

    def _params(body: dict, default_max: int | None, prompt_ids: list[int]) -> Request:
        if body.get("model") != model_name:
            raise ApiError(404, f"The model '{body.get('model')}' does not exist; this server serves '{model_name}'",
                           "invalid_request_error", "model", "model_not_found")
        if body.get("n") not in (None, 1):
            raise ApiError(400, "n must be 1 (one choice per request)", param="n")
        if body.get("logprobs") not in (None, False, 0):
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = default_max if default_max is not None else engine.rows.capacity(len(prompt_ids))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, f"max_tokens must be an integer ≥ 1, got {max_tokens!r}", param="max_tokens")
        temperature = _number(body, "temperature", 1.0, lo=0.0, hi=2.0)
        top_p = _number(body, "top_p", 1.0, lo=0.0, hi=1.0)
        if top_p <= 0:
            raise ApiError(400, "top_p must be in (0, 1]", param="top_p")
        top_k = body.get("top_k", 0) or 0
        if not isinstance(top_k, int) or top_k < 0:
            raise ApiError(400, f"top_k must be an integer ≥ 0, got {top_k!r}", param="top_k")
        penalty = _number(body, "repetition_penalty", 1.0, lo=0.0, hi=None)
        if penalty <= 0:
            raise ApiError(400, "repetition_penalty must be > 0", param="repetition_penalty")
        seed = body.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ApiError(400, f"seed must be a non-negative integer, got {seed!r}", param="seed")
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise ApiError(400, "stop must be a string or a list of up to 4 strings", param="stop")
        return Request(prompt_ids=prompt_ids, max_tokens=max_tokens, do_sample=temperature > 0,
                       temperature=temperature if temperature > 0 else 1.0, top_k=top_k, top_p=top_p, seed=seed,
                       repetition_penalty=penalty, stop=tuple(s for s in stop if s))

    def _encode_prompt(body: dict) -> list[int]:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            if tokenizer is None:
                raise ApiError(400, "this server has no tokenizer: send the prompt as token ids", param="prompt")
            return list(tokenizer.encode(p))
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            bad = [t for t in p if t < 0 or (vocab and t >= vocab)]
            if bad:
                raise ApiError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
            return list(p)
        if isinstance(p, list) and len(p) > 1:
            raise ApiError(400, "one prompt per request (send the prompts as separate requests)", param="prompt")
        raise ApiError(400, "prompt must be a non-empty string or a list of token ids", param="prompt")

    def _encode_chat(body: dict) -> list[int]:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "messages must be a non-empty list", param="messages")
        if tokenizer is None:
            raise ApiError(400, "this server has no tokenizer: chat needs one", param="messages")
        system, turns = None, []
        for i, m in enumerate(msgs):
            role = m.get("role") if isinstance(m, dict) else None
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts: the text ones
                content = "".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ApiError(400, f"messages[{i}] must have role system / user / assistant and text content",
                               param=f"messages[{i}]")
            if role == "system":
                if i != 0:
                    raise ApiError(400, "a system message may only come first", param=f"messages[{i}]")
                system = content
            elif role == "user":
                if turns and turns[-1][1] is None:
                    raise ApiError(400, f"messages[{i}]: two user messages in a row", param=f"messages[{i}]")
                turns.append([content, None])
            else:
                if not turns or turns[-1][1] is not None:
                    raise ApiError(400, f"messages[{i}]: an assistant message must follow a user message",
                                   param=f"messages[{i}]")
                turns[-1][1] = content
        if not turns or turns[-1][1] is not None:
            raise ApiError(400, "the last message must be the user's", param="messages")
        history = [(q, a) for q, a in turns[:-1]]
        query = turns[-1][0]
        if system is not None:
            import inspect

            if "system" not in inspect.signature(tokenizer.build_chat_prompt).parameters:
                raise ApiError(400, f"the {getattr(tokenizer, 'family', 'model')} chat format has no system "
                                    "message", param="messages[0]")
            text = tokenizer.build_chat_prompt(query, history, system=system)
        else:
            text = tokenizer.build_chat_prompt(query, history)
        return list(tokenizer.encode(text))

    async def _serve(http: HttpRequest, body: dict, chat: bool):
        try:
            ids = _encode_chat(body) if chat else _encode_prompt(body)
            req = _params(body, None if chat else 16, ids)
        except ApiError:
            raise
        except AscendAdaptError as exc:
            raise _from_engine_error(exc) from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        req.on_event = lambda kind, data: loop.call_soon_threadsafe(events.put_nowait, (kind, data))
        try:
            engine.submit(req)
        except AscendAdaptError as exc:
            raise _from_engine_error(exc) from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        include_usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
        t0 = time.time()

        checked = [time.monotonic()]

        async def next_event():
            """The next engine event; None when the client went away (the request is cancelled).

            uvicorn drops writes to a closed connection silently, so the connection is polled:
            at least every DISCONNECT_POLL_S, whether events flow or not."""
            while True:
                if time.monotonic() - checked[0] >= DISCONNECT_POLL_S:
                    checked[0] = time.monotonic()
                    if await http.is_disconnected():
                        req.cancel()
                        return None
                try:
                    return await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    continue

        if not stream:
            while True:
                ev = await next_event()
                if ev is None:
                    _log(req, "chat" if chat else "completions", stream, t0)
                    return Response(status_code=499)
                kind, data = ev
                if kind == "error":
                    _log(req, "chat" if chat else "completions", stream, t0)
                    raise _from_engine_error(data if isinstance(data, AscendAdaptError)
                                             else AscendAdaptError(str(data))) from None
                if kind == "done":
                    break
            _log(req, "chat" if chat else "completions", stream, t0)
            choice: dict[str, Any] = {"index": 0, "finish_reason": data["finish_reason"], "token_ids": req.token_ids}
            if chat:
                choice["message"] = {"role": "assistant", "content": req.text}
            else:
                choice.update(text=req.text, logprobs=None)
            return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(t0),
                    "model": model_name, "choices": [choice], "usage": data["usage"]}

        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, ids: list[int], finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                c = {"index": 0, "delta": delta, "finish_reason": finish, "token_ids": ids}
            else:
                c = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None, "token_ids": ids}
            body = {"id": rid, "object": obj, "created": int(t0), "model": model_name, "choices": [c]}
            if include_usage:
                body["usage"] = None
            return sse_event(body)

        async def sse():
            done = False
            try:
                if chat:
                    yield chunk(None, [], None, role=True)
                while True:
                    ev = await next_event()
                    if ev is None:
                        return
                    kind, data = ev
                    if kind == "error":
                        err = _from_engine_error(data if isinstance(data, AscendAdaptError)
                                                 else AscendAdaptError(str(data)))
                        yield sse_event(_error_body(err))
                        done = True
                        return
                    if kind == "delta":
                        if data["text"] or data["token_ids"]:
                            yield chunk(data["text"], data["token_ids"], None)
                        continue
                    done = True
                    yield chunk(None, [], data["finish_reason"])
                    if include_usage:
                        u = {"id": rid, "object": obj, "created": int(t0), "model": model_name, "choices": [],
                             "usage": data["usage"]}
                        yield sse_event(u)
                    yield "data: [DONE]\n\n"
                    return
            finally:
                if not done:
                    req.cancel()  # the client went away (or the stream was closed): free the row
                _log(req, "chat" if chat else "completions", stream, t0)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _log(req: Request, endpoint: str, stream: bool, t0: float) -> None:
        if request_log is None:
            return
        rec = {"time": round(t0, 3), **(labels or {}), "id": req.id, "endpoint": endpoint, "stream": stream,
               "prompt_tokens": len(req.prompt_ids), "completion_tokens": len(req.token_ids),
               "finish_reason": req.finish_reason or "cancelled",
               "ttft_s": None if req.t_first_s is None else round(req.t_first_s - req.t_arrival_s, 6),
               "total_s": round(time.time() - t0, 6)}
        with open(request_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    async def _json(http: HttpRequest) -> dict:
        try:
            body = await http.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        return await _serve(http, await _json(http), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        return await _serve(http, await _json(http), chat=True)

    return app


# Characters JSON leaves raw (ensure_ascii=False) that line splitters other than SSE's CR / LF
# break lines at (Python's str.splitlines, hence httpx's iter_lines): escaped, the data stays one line.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def sse_event(body: dict) -> str:
    """One server-sent event carrying `body` as JSON on a single `data:` line (text kept as UTF-8,
    except the characters some clients take for line breaks, which are escaped)."""
    return f"data: {json.dumps(body, ensure_ascii=False).translate(_LINE_BREAKS)}\n\n"


def _number(body: dict, key: str, default: float, lo: float, hi: float | None) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo:g}, {hi:g}]" if hi is not None else f"≥ {lo:g}"
        raise ApiError(400, f"{key} must be a number in {rng}, got {v!r}", param=key)
    return float(v)
