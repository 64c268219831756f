"""Replicas per device on Ray Serve: `ascend-adapt serve MODEL --devices 0,1,…`.

One Ray Serve deployment with one replica per device id. The replica of rank r (Ray Serve gives
the replicas of a deployment the ranks 0 … n−1, `serve.get_replica_context().rank`, and hands a
restarted replica the rank its predecessor freed) owns one `Engine` bound to `devices[r]`: for
`acl` the id goes to the ACL runtime (`device_id`), for sim / onnxruntime / torch it labels the
replica. Each replica serves the FastAPI app of `ascend_adapt.serve.app` through Ray Serve's
FastAPI ingress (`@serve.ingress()` with `__serve_build_asgi_app__`, the form for an app built
at replica start: ray 2.60 `ray/serve/api.py`, `ingress`), so the routes, errors, streaming,
`/health` and `/metrics` are the single-process server's, behind Ray Serve's HTTP proxy. The
app's lifespan starts the replica's engine and drains it when the replica stops.

Every response carries `X-Ascend-Device: <id>` (the replica that answered); `/metrics` is that
replica's, every sample labelled `device="<id>"`; `/health` and the request log name the device.

The command starts a local Ray cluster (`ray.init`, no dashboard, its files in a temporary
directory under the system temp, removed at exit), runs the application, and on SIGINT /
SIGTERM drains: through a small Ray actor (`DrainSignal`) every replica stops taking requests
(503 `shutting_down`), finishes its engine's requests and the responses still being sent (at most
`--graceful-timeout` s) and reports back; then Serve and Ray are shut down.

Needs `ray[serve]` (the `serve` extra); imported only for `--devices`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from ascend_adapt.errors import AscendAdaptError, ConfigError, MissingDependencyError

APP_NAME = "ascend-adapt"
DEPLOYMENT_NAME = "replicas"
DEVICE_HEADER = "X-Ascend-Device"
# Ray's logical CPUs per replica. Scheduling only (it does not cap the threads a replica runs, but
# Ray sets OMP_NUM_THREADS=1 in a worker that asks for less than one CPU): small, so that n
# replicas start on a host with fewer cores than replicas, as one card's engine mostly waits on
# its card.
REPLICA_CPUS = 0.5
# Requests a replica takes beyond its engine's queue (--max-queue): its rows and the odd /health
# or /metrics. Past max_queue + this, Ray's proxy would queue requests itself, without the
# engine's 429; rows of a static-batch graph are far fewer than this.
REPLICA_HEADROOM = 64
GRACEFUL_LOOP_S = 0.2  # how often a stopping replica checks that its requests are done


def require_ray():
    """(ray, ray.serve), or the error naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise MissingDependencyError("ray", "serve", "ascend-adapt serve --devices (Ray Serve replicas)") from exc
    return ray, serve


def parse_devices(text: str) -> list[int]:
    """`"0,1,2,3"` → [0, 1, 2, 3]: distinct non-negative device ids.

    Raises:
        ConfigError: an empty list, an id that is not a non-negative integer, or an id twice.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError("--devices is empty", "give device ids separated by commas, e.g. --devices 0,1")
    out = []
    for p in parts:
        if not re.fullmatch(r"\d+", p):
            raise ConfigError(f"--devices: '{p}' is not a device id (a non-negative integer)",
                              "give device ids separated by commas, e.g. --devices 0,1")
        if int(p) in out:
            raise ConfigError(f"--devices: device {int(p)} is listed twice", "list each device once")
        out.append(int(p))
    return out


class _DeviceHeader:
    """ASGI middleware: every HTTP response names the device of the replica that answered; `open`
    counts the requests being answered (a draining replica waits for them)."""

    def __init__(self, app, device: str, counter: list[int]):
        self.app, self.value, self.open = app, device.encode(), counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (DEVICE_HEADER.lower().encode(), self.value)]}
            await send(message)

        self.open[0] += 1
        try:
            await self.app(scope, receive, send_named)
        finally:
            self.open[0] -= 1


class DrainSignal:
    """A Ray actor the command and the replicas share: the command starts the drain, each replica
    (waiting in `wait`) drains its engine and reports its device when its last response is out.

    `serve.shutdown()` kills the HTTP proxy at once (ray 2.60 `serve/_private/proxy_state.py`,
    `ProxyState.shutdown`), cutting the responses it still carries, so the replicas finish theirs
    first; draining through the engines also answers requests that arrive meanwhile with the
    OpenAI-shaped 503 `shutting_down` (+ Retry-After), as the one-process server does.
    """

    def __init__(self):
        import asyncio

        self._event = asyncio.Event()
        self._drained: list[int] = []

    async def wait(self) -> bool:
        await self._event.wait()
        return True

    def start(self) -> None:
        self._event.set()

    def report(self, device: int) -> None:
        self._drained.append(device)

    def drained(self) -> list[int]:
        return sorted(set(self._drained))


class DeviceReplica:
    """One replica: the engine of one device and the OpenAI app over it.

    Args:
        model_dir: the model (as `server.build`).
        devices: every replica's device id; this replica takes `devices[rank]`.
        backend, batch, max_queue, model_name, request_log: as `server.build`.
        backend_options: passed to the backend factory (for `acl` the device id is added).
        drain: a `DrainSignal` actor handle (None: no drain on signal, Ray Serve's own stop).
        graceful_s: most seconds to spend finishing the requests once the drain starts.
    """

    def __init__(self, model_dir: str, devices: list[int], backend: str, batch: int | None, max_queue: int,
                 model_name: str, request_log: str | None, backend_options: dict, drain=None,
                 graceful_s: float = 60.0):
        from ray import serve

        from .server import build

        logging.getLogger("ascend_adapt.serve").setLevel(logging.INFO)
        rank = getattr(serve.get_replica_context().rank, "rank", None)
        if rank is None or not 0 <= rank < len(devices):
            raise ConfigError(f"replica rank {rank} has no device in --devices {','.join(map(str, devices))}")
        self.device = devices[rank]
        options = dict(backend_options)
        from ascend_adapt.backends import BACKENDS

        if "device_id" in BACKENDS.get(backend).options:  # a card backend (acl): this replica's device
            options["device_id"] = self.device
        self.served = build(model_dir, backend, batch=batch, max_queue=max_queue, model_name=model_name,
                            request_log=request_log, backend_options=options, labels={"device": str(self.device)})
        self.open = [0]  # requests being answered (the middleware counts them)
        if drain is not None:
            threading.Thread(target=self._drain_when_told, args=(drain, graceful_s), daemon=True,
                             name=f"ascend-adapt-drain-{self.device}").start()

    def __serve_build_asgi_app__(self):
        """The app Ray Serve's ingress serves (called once, after __init__, in the replica)."""
        app = self.served.app
        app.add_middleware(_DeviceHeader, device=str(self.device), counter=self.open)
        return app

    def _drain_when_told(self, drain, graceful_s: float) -> None:
        """Wait for the command's drain; then refuse new requests (503 `shutting_down`), finish the
        engine's requests and the responses still being sent, and report this device drained."""
        import ray

        ray.get(drain.wait.remote())
        log = logging.getLogger("ascend_adapt.serve")
        end = time.monotonic() + graceful_s
        done = self.served.engine.drain(graceful_s)
        while self.open[0] > 0 and time.monotonic() < end:  # the last chunks of the finished streams
            time.sleep(0.02)
        log.info("device %d drained%s", self.device, "" if done else f" (timed out after {graceful_s:g} s)")
        ray.get(drain.report.remote(self.device))

    def info(self) -> dict:
        """What this replica serves (the command prints it when the application is up)."""
        rows = self.served.engine.rows
        return {"device": self.device, "batch": rows.batch, "context": rows.max_len}

    def check_health(self) -> None:
        """Ray Serve's health check: a failed engine fails it, and Ray Serve replaces the replica."""
        failed = self.served.engine.failed
        if failed is not None:
            raise RuntimeError(f"the engine of device {self.device} stopped: {failed}")


def deployment(n_replicas: int, max_queue: int, graceful_s: float):
    """The Ray Serve deployment of `DeviceReplica`: `n_replicas` replicas, each taking up to its
    engine's queue + rows, drained for at most `graceful_s` seconds when stopped."""
    from ray import serve

    ingress = serve.ingress()(DeviceReplica)
    # graceful_s: Ray Serve's own stop (a replica replaced, or no drain signal); after the command's
    # drain the replicas are idle and stop at once
    return serve.deployment(
        name=DEPLOYMENT_NAME, num_replicas=n_replicas, max_ongoing_requests=max_queue + REPLICA_HEADROOM,
        graceful_shutdown_timeout_s=graceful_s, graceful_shutdown_wait_loop_s=GRACEFUL_LOOP_S,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        logging_config={"enable_access_log": False, "log_level": "WARNING"})(ingress)


def startup_error(text: str) -> AscendAdaptError:
    """A clear error for replicas that did not start, from what Ray Serve says of them (the
    deployment's status message: the replica's traceback): the replica's own error and fix when it
    raised an `AscendAdaptError`, else its last exception line."""
    ours = re.findall(r"^.*?ascend_adapt\.errors\.\w+: (.*)\n(?:.*?\bfix: (.*))?", text, re.MULTILINE)
    if ours:
        message, hint = ours[-1]
        return AscendAdaptError(f"a Ray Serve replica did not start: {message.strip()}", hint.strip() or None)
    lines = re.findall(r"^.*?\b((?:[\w.]+\.)?\w*(?:Error|Exception)\b: .*)$", text, re.MULTILINE)
    last = lines[-1].strip() if lines else (text.strip().splitlines() or ["(no message)"])[-1].strip()
    return AscendAdaptError(f"the Ray Serve replicas did not start: {last}",
                            "run `ascend-adapt serve` without --devices to see the model load on its own")


def _status_text(serve, exc: BaseException) -> str:
    """The deployment's status message (the replica's traceback), or the exception's text."""
    try:
        app = serve.status().applications[APP_NAME]
        dep = app.deployments.get(DEPLOYMENT_NAME)
        return "\n".join(m for m in (app.message, dep.message if dep else "", str(exc)) if m)
    except Exception:  # Serve itself is gone: what the exception says
        return str(exc)


def serve_replicas(model_dir: str, devices: list[int], *, backend: str = "sim", host: str = "127.0.0.1",
                   port: int = 8000, batch: int | None = None, max_queue: int = 64, model_name: str | None = None,
                   request_log: str | None = None, graceful_s: float = 60.0, backend_options: dict | None = None,
                   on_ready=None) -> None:
    """Serve MODEL_DIR with one Ray Serve replica per device until SIGINT / SIGTERM, then drain.

    Args:
        model_dir, backend, batch, max_queue, model_name, request_log, backend_options: as `server.build`.
        devices: device ids, one replica each.
        host, port: where Ray Serve's HTTP proxy listens (port 0: a free port, chosen here).
        graceful_s: most seconds each replica spends finishing its requests when stopped.
        on_ready: called with (url, info) once every replica is up; info: one replica's
            `DeviceReplica.info()` (rows and context are the same on every replica).
    """
    from .server import bind, require_serve

    require_serve("fastapi")
    ray, serve = require_ray()
    if max_queue < 1:
        raise ConfigError(f"--max-queue must be ≥ 1, got {max_queue}")
    if backend_options and "device_id" in backend_options:
        raise ConfigError("--device-id and --devices exclude each other", "--devices gives each replica its device")
    from ascend_adapt.model_zoo.tokenizers import load_tokenizer
    from ascend_adapt.om_convert.convert import resolve_artifact

    load_tokenizer(model_dir)  # what the replicas load first: a bad directory fails here, before Ray starts
    resolve_artifact(model_dir, backend)
    sock = bind(host, port)  # a clear error for a port in use; Ray's proxy binds it again below
    real_port = sock.getsockname()[1]
    sock.close()
    name = model_name or Path(model_dir).resolve().name
    log = logging.getLogger("ascend_adapt.serve")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster: nothing reported out
    temp = tempfile.mkdtemp(prefix="ascend-adapt-ray-")
    ray.init(num_cpus=max(1, math.ceil(len(devices) * REPLICA_CPUS)), include_dashboard=False, _temp_dir=temp,
             logging_level=logging.WARNING, namespace=APP_NAME)
    seen: list[int] = []
    stop = threading.Event()
    old = {}
    try:
        serve.start(http_options={"host": host, "port": real_port},
                    logging_config={"enable_access_log": False, "log_level": "WARNING"})
        drain = ray.remote(num_cpus=0)(DrainSignal).options(name="drain").remote()
        app = deployment(len(devices), max_queue, graceful_s).bind(
            str(model_dir), list(devices), backend, batch, max_queue, name, request_log, dict(backend_options or {}),
            drain, graceful_s)
        try:
            handle = serve.run(app, name=APP_NAME, route_prefix="/")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            raise startup_error(_status_text(serve, exc)) from None
        info = handle.info.remote().result()
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum, frame):
                seen.append(signum)
                stop.set()

            old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        shown = f"[{host}]" if ":" in host else host
        if on_ready is not None:
            on_ready(f"http://{shown}:{real_port}", info)
        while not stop.wait(1.0):
            pass
        log.info("signal %d: finishing the requests in flight on %d replicas", seen[0], len(devices))
        ray.get(drain.start.remote())
        end = time.monotonic() + graceful_s + 5  # the replicas time themselves out at graceful_s
        while len(ray.get(drain.drained.remote())) < len(devices) and time.monotonic() < end:
            time.sleep(0.1)
        left = sorted(set(devices) - set(ray.get(drain.drained.remote())))
        if left:
            log.warning("devices %s did not report drained in %g s; stopping anyway", left, graceful_s)
        else:
            log.info("stopped by signal %d after finishing the requests in flight", seen[0])
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
