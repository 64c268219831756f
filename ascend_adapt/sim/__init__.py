"""The Ascend CPU simulator: acceptance (what ATC / the card refuses), numerics (precision modes),
cost (roofline latency and memory on a target profile).

It stands in for the NPU; it never pretends to be one. Its artifact is `*.omsim` (never `.om`)
and every report it prints says "simulated". See `docs/simulator.md` for what is emulated and
how faithfully.

    >>> from ascend_adapt.sim import SimSettings, check_model, estimate_cost
    >>> settings = SimSettings(target="Ascend310P3", precision_mode="force_fp16")

Submodules (imported lazily; none imports onnxruntime at module level):
    settings    SimSettings: target, precision mode, keep_dtype, mixlists, input shapes, gears.
    acceptance  check_model / accept_model / SimulatorRejection.
    numerics    emulate_precision (graph transform), SimSession (onnxruntime execution).
    cost        estimate_cost → CostReport (per-op roofline table, memory totals).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SimSettings": "settings",
    "GearSpec": "settings",
    "normalize_precision_mode": "settings",
    "read_keep_dtype": "settings",
    "read_mixlist": "settings",
    "SimulatorRejection": "acceptance",
    "Problem": "acceptance",
    "AcceptanceReport": "acceptance",
    "check_model": "acceptance",
    "accept_model": "acceptance",
    "check_memory": "acceptance",
    "plan_precision": "numerics",
    "emulate_precision": "numerics",
    "SimSession": "numerics",
    "estimate_cost": "cost",
    "estimate_memory": "cost",
    "CostReport": "cost",
    "OpCost": "cost",
    "MemoryEstimate": "cost",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'ascend_adapt.sim' has no attribute '{name}'")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
