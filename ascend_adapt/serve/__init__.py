"""`ascend-adapt serve`: an OpenAI-compatible server with continuous batching over static graphs.

- `rows`: per-row prefill / decode over a converted artifact's static-batch graphs (`GraphRows`),
  or batch-1 sessions of a checkpoint backend (`SessionRows`).
- `engine`: the scheduler thread (queue, refills between steps, sampling, stop strings).
- `metrics`: Prometheus metrics.
- `app`: the FastAPI routes (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, `/health`,
  `/metrics`).
- `server`: loading a model and running it under uvicorn.

Needs the `serve` extra (fastapi, uvicorn, prometheus_client); nothing here is imported by the
CLI's `--help`.
"""
