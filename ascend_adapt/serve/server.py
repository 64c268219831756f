"""Load a model and serve it with uvicorn (what `ascend-adapt serve` runs)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from ascend_adapt.errors import ConfigError, MissingDependencyError


def require_serve(module: str):
    """Import one of the `serve` extra's packages, or say which extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, "serve", "ascend-adapt serve") from exc


@dataclass
class Served:
    """A loaded model ready to serve: the engine, the ASGI app and what they serve."""

    engine: object
    app: object
    model_name: str
    tokenizer: object


def build(model_dir: str, backend: str = "sim", batch: int | None = None, max_queue: int = 64,
          model_name: str | None = None, request_log: str | None = None, backend_options: dict | None = None,
          labels: dict[str, str] | None = None) -> Served:
    """Load MODEL_DIR on `backend` and make the engine and the app (nothing started yet).

    Args:
        model_dir: a converted artifact (sim / onnxruntime / acl) or an HF checkpoint (torch).
        backend: backend name in the registry.
        batch: rows; for a converted artifact it must be None or the graphs' B.
        max_queue: most waiting requests before a 429.
        model_name: the id clients name (default: the directory's name).
        request_log: a JSON-lines file appended per finished request.
        backend_options: passed to the backend factory.
        labels: what this server is among several (a Ray Serve replica: {"device": "0"}): a label
            on every metric, a field of `/health` and of each request-log line.
    """
    require_serve("fastapi")
    from pathlib import Path

    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.om_convert.convert import resolve_artifact
    from ascend_adapt.backends import get_backend

    from .app import create_app
    from .engine import Engine
    from .metrics import ServeMetrics
    from .rows import make_rows

    if max_queue < 1:
        raise ConfigError(f"--max-queue must be ≥ 1, got {max_queue}")
    tokenizer = load_tokenizer(model_dir)
    be = get_backend(backend, resolve_artifact(model_dir, backend), **(backend_options or {}))
    rows = make_rows(be, batch)
    engine = Engine(rows, tokenizer, max_queue=max_queue, metrics=ServeMetrics(rows.batch, labels=labels))
    name = model_name or Path(model_dir).resolve().name
    return Served(engine, create_app(engine, tokenizer, name, request_log, labels), name, tokenizer)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          "choose another --port (0 = any free port) or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app, graceful_s: float = 60.0, log_level: str = "info", lifespan: str = "on"):
    """A uvicorn Server for `app`: on SIGINT / SIGTERM it stops accepting, finishes the open
    responses (at most `graceful_s` seconds), then the app drains its engine (its lifespan;
    `lifespan="off"` leaves the engine to the caller)."""
    uvicorn = require_serve("uvicorn")
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_s, access_log=False,
                            lifespan=lifespan)
    return uvicorn.Server(config)


def serve_forever(served: Served, host: str, port: int, graceful_s: float = 60.0, on_ready=None) -> None:
    """Bind, report the address through `on_ready(url)`, and serve until SIGINT / SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{real_port}")
    server = uvicorn_server(served.app, graceful_s)
    # uvicorn handles SIGINT / SIGTERM (stop accepting, finish the open responses, drain), then
    # raises the signal again for the handler it found: this one notes it, so a drained stop
    # ends the command with status 0 instead of a death by signal.
    import signal
    import threading

    seen: list[int] = []
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if seen:
        logging.getLogger("ascend_adapt.serve").info("stopped by signal %d after finishing the requests in flight",
                                                     seen[0])
