"""`ascend-adapt serve` (light: nothing of fastapi / uvicorn / the backends at import)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--backend", default="sim", show_default=True,
              help="Backend: sim, onnxruntime, acl (a converted artifact) or torch (an HF checkpoint).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0 = any free port; the address is printed).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Rows decoded together. A converted artifact: its graphs' B (the default; another value is "
                   "refused). torch: any (default 4).")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests that may wait for a row; beyond it requests get 429 with Retry-After.")
@click.option("--model-name", default=None, help="Model id clients send (default: MODEL_DIR's name).")
@click.option("--request-log", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Append one JSON line per finished request to this file.")
@click.option("--graceful-timeout", "graceful_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="On SIGINT / SIGTERM: seconds to finish the requests in flight before stopping.")
@click.option("--precision-mode", default=None, help="Simulator only: override the artifact's precision mode.")
@click.option("--device-id", type=click.IntRange(min=0), default=None, help="acl only: NPU index.")
@click.option("--devices", default=None, metavar="IDS",
              help="Ray Serve: one replica per device id (e.g. 0,1,2,3), each with its own engine (acl: on that "
                   "NPU; other backends: a label), behind Ray Serve's HTTP proxy. Needs ray[serve].")
@click.option("--dtype", default=None,
              help="Compute dtype (float32, float16) of a backend that takes one (torch, …; another backend is told "
                   "which take it).")
def serve_cmd(model_dir, backend, host, port, batch, max_queue, model_name, request_log, graceful_s,
              precision_mode, device_id, devices, dtype):
    """Serve MODEL_DIR with an OpenAI-compatible API (/v1/completions, /v1/chat/completions,
    /v1/models, /health, /metrics), with continuous batching over the graphs' static batch.

    With --devices: one Ray Serve replica per device id, the same routes.

    Stop it with Ctrl-C or SIGTERM: it stops taking requests and finishes the ones in flight.
    """
    if devices is not None and device_id is not None:
        raise click.UsageError("--device-id and --devices exclude each other (--devices gives each replica "
                               "its device)")
    options = _backend_options(backend, {"precision_mode": precision_mode, "device_id": device_id, "dtype": dtype})
    if request_log:
        if not Path(request_log).resolve().parent.is_dir():
            raise click.BadParameter(f"the directory of '{request_log}' does not exist", param_hint="--request-log")
    if devices is not None:
        from ascend_adapt.serve.ray_app import parse_devices, serve_replicas

        ids = parse_devices(devices)

        def replicas_ready(url, info):
            click.echo(f"serving '{model_name or Path(model_dir).resolve().name}' ({backend}, {len(ids)} Ray Serve "
                       f"replicas on devices {','.join(map(str, ids))}, {info['batch']} rows each, context "
                       f"{info['context']}) on {url}", err=True)

        serve_replicas(model_dir, ids, backend=backend, host=host, port=port, batch=batch, max_queue=max_queue,
                       model_name=model_name, request_log=request_log, graceful_s=graceful_s,
                       backend_options=options, on_ready=replicas_ready)
        return
    from ascend_adapt.serve.server import build, serve_forever

    served = build(model_dir, backend, batch=batch, max_queue=max_queue, model_name=model_name,
                   request_log=request_log, backend_options=options)
    rows = served.engine.rows

    def ready(url):
        click.echo(f"serving '{served.model_name}' ({backend}, {rows.batch} rows, context {rows.max_len}) on {url}",
                   err=True)

    serve_forever(served, host, port, graceful_s, on_ready=ready)


def _backend_options(backend: str, given: dict) -> dict:
    """The backend options given (None: not given), each checked against the backends' registry
    metadata (`Backend.options`): an option `backend` does not take is refused, naming the LM
    backends that take it, so a new backend needs no edit here. They are listed most specific
    first (fewest options, then by name): "--dtype applies to --backend torch / torch_mlu / …"."""
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return {}
    from ascend_adapt.backends import BACKENDS

    be = BACKENDS.get(backend)
    for key in given:
        if key not in be.options:
            takers = [n for n, b in sorted(BACKENDS.items(), key=lambda nb: (len(nb[1].options), nb[0]))
                      if key in b.options and "lm" in b.levels]
            flag = "--" + key.replace("_", "-")
            raise click.UsageError(f"{flag} applies to --backend {' / '.join(takers)}" if takers
                                   else f"{flag} applies to no registered LM backend")
    return given
