"""Multi-chip split (`convert --chips N`): the layers cut into N contiguous ranges, one stage graph
(one OM) per chip. docs/graph_contract.md ("Multi-chip split") and docs/deployment.md describe it.

Stage i holds layers [a_i, a_{i+1}) and only their weights and KV cache; stage 0 also holds the
embedding, the last stage the final norm and the head (a tied embedding / head matrix on both).

    stage 0      input_ids, position_ids, attention_mask, past_* [n0, …]  → hidden_out, present_* [n0, …]
    stage 1..    hidden_in, position_ids, attention_mask, past_* [ni, …]  → hidden_out, present_*
    last stage   hidden_in, position_ids, attention_mask, past_* [nl, …]  → logits (and every other
                 output the whole-model graph has), present_*

`hidden_in` / `hidden_out` are [B, seq, H] in the activation dtype (fp16 for an fp16 export): the
tensor the whole-model graph passes from layer a_{i+1}-1 to layer a_{i+1}, so a split computes
exactly what the unsplit graph computes. The runtime (`ascend_adapt.runtime.pipeline`) hands it
from chip to chip through the host in this version (device → host → device, counted).

Artifact (a convert output with N > 1):

    OUT/export/stage{i}_{kind}.onnx     kind = step (default layout) or prefill / decode; ONE weights.bin
    OUT/export/export.json              "graphs" keyed by stage graph, "stages" [{index, layers, device_id, …}]
    OUT/atc/stage{i}_{kind}.sh          one ATC command per stage graph → OUT/stage{i}_{kind}.om
    OUT/model.omsim/pipeline.json       the stages, their devices, per-chip memory (simulated)
    OUT/model.omsim/stage{i}.omsim/     one simulator artifact per chip (its graphs under their kind
                                        names, weights.bin hard-linked), accepted per chip
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ascend_adapt.errors import ConfigError

PIPELINE = "pipeline.json"
FORMAT = "ascend-adapt.pipeline"
FORMAT_VERSION = 1
HIDDEN_IN, HIDDEN_OUT = "hidden_in", "hidden_out"


def is_pipeline(path) -> bool:
    """True for a split simulator artifact (OUT/model.omsim holding pipeline.json)."""
    return (Path(path) / PIPELINE).is_file()


def read_pipeline(path) -> dict:
    """pipeline.json of a split artifact (raising a clear error when it is not one)."""
    p = Path(path) / PIPELINE
    if not p.is_file():
        raise ConfigError(f"{path}: no {PIPELINE} — not a split artifact", "convert with --chips N (N > 1)")
    info = json.loads(p.read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{p}: format {info.get('format')} v{info.get('format_version')}",
                          f"this version reads {FORMAT} v{FORMAT_VERSION}; convert again")
    return info


# ---------------------------------------------------------------------------- graphs
def check_ranges(ranges: Sequence[Sequence[int]], num_layers: int) -> list[tuple[int, int]]:
    """Contiguous [a, b) ranges of ≥ 1 layer covering 0..num_layers, or a ConfigError."""
    out = [(int(a), int(b)) for a, b in ranges]
    if not out or out[0][0] != 0 or out[-1][1] != num_layers or any(b <= a for a, b in out) or any(
            out[i][1] != out[i + 1][0] for i in range(len(out) - 1)):
        raise ConfigError(f"layer ranges {out} do not cut layers 0..{num_layers - 1} into contiguous, non-empty "
                          "pieces", "use estimate.fit.partition_layers (what convert --chips does)")
    return out


def graph_units(spec, stages: Sequence[Mapping], kinds: Sequence[str]) -> list[tuple[str, str, dict]]:
    """(graph name, kind, stage dict) for every stage and graph kind: "stage{i}_{kind}"."""
    ranges = check_ranges([s["layers"] for s in stages], spec.num_layers)
    n = len(ranges)
    units = []
    for i, (r, s) in enumerate(zip(ranges, stages)):
        st = {"index": i, "layers": list(r), "first": i == 0, "last": i == n - 1,
              "device_id": int(s.get("device_id", i))}
        units += [(f"stage{i}_{k}", k, st) for k in kinds]
    return units


def stage_io(io: Mapping, spec, stage: Mapping) -> dict:
    """The I/O of a stage graph from the whole-model graph's (`contract.io_spec`): its layers'
    cache only, `hidden_in` instead of `input_ids` after the first stage, `hidden_out` (+ its
    present K/V) instead of the head's outputs before the last."""
    a, b = stage["layers"]
    present = {n: (shape, dt) for n, shape, dt in io["outputs"]}
    act = present["present_keys"][1]  # the activation dtype (the cache's)
    ids_shape = next(shape for n, shape, _ in io["inputs"] if n == "input_ids")
    hidden = [ids_shape[0], ids_shape[1], spec.hidden_size]

    def layers(name, shape):
        return [b - a, *shape[1:]] if name in ("past_keys", "past_values", "present_keys", "present_values") else shape

    inputs = []
    for n, shape, dt in io["inputs"]:
        if n == "input_ids" and not stage["first"]:
            inputs.append((HIDDEN_IN, hidden, act))
        else:
            inputs.append((n, layers(n, shape), dt))
    if stage["last"]:
        outputs = [(n, layers(n, shape), dt) for n, shape, dt in io["outputs"]]
    else:
        outputs = [(HIDDEN_OUT, hidden, act)] + [(n, layers(n, shape), dt) for n, shape, dt in io["outputs"]
                                                 if n in ("present_keys", "present_values")]
    return {"inputs": inputs, "outputs": outputs}


def stage_manifest(manifest: dict, spec, units, batch: int, seq_len: int, max_len: int) -> dict:
    """Rewrite an export manifest in place for a split: "graphs" keyed by stage graph, "stages"."""
    from ascend_adapt.contract import io_spec

    kv = manifest["weight_dtype"]
    graphs, stages = {}, {}
    for gname, kind, st in units:
        io = stage_io(io_spec(spec, kind, batch, seq_len, max_len, kv_dtype=kv), spec, st)
        graphs[gname] = {"file": f"{gname}.onnx",
                         **{k: [{"name": n, "shape": s, "dtype": t} for n, s, t in v] for k, v in io.items()}}
        stages.setdefault(st["index"], {**st, "graphs": {}})["graphs"][kind] = gname
    manifest["graphs"] = graphs
    manifest["stages"] = [stages[i] for i in sorted(stages)]
    manifest["handover"] = {"from": HIDDEN_OUT, "to": HIDDEN_IN, "dtype": kv,
                            "shape": [batch, "seq", spec.hidden_size], "through": "host"}
    return manifest


def stage_view(export: Mapping, index: int) -> dict:
    """The export manifest as stage `index` sees it: its graphs keyed by kind ("step" or
    "prefill" / "decode"), so single-graph code (SimLMBackend, AclLMBackend) runs one stage."""
    st = export["stages"][index]
    return {**export, "graphs": {k: export["graphs"][g] for k, g in st["graphs"].items()}, "stage": st}


def input_shapes_of(manifest: Mapping, graph: str, soc_version: str | None = None):
    """`contract.graph_input_shapes` for a whole-model graph or a stage graph of a split."""
    from ascend_adapt.contract import graph_input_shapes

    for st in manifest.get("stages") or ():
        for kind, g in st["graphs"].items():
            if g == graph:
                return graph_input_shapes({**manifest, "graphs": {kind: manifest["graphs"][g]}}, kind, soc_version)
    return graph_input_shapes(manifest, graph, soc_version)


# ---------------------------------------------------------------------------- convert side
def chip_label(stage: Mapping, target: str) -> str:
    a, b = stage["layers"]
    parts = [f"layers {a}-{b - 1}"] + (["embedding"] if stage["first"] else []) + (["head"] if stage["last"] else [])
    return f"chip {stage['index']} (device {stage['device_id']}, {target}: {', '.join(parts)})"


def write_split_omsim(export_dir, out, target, atc_options: Mapping[str, Any]) -> dict:
    """OUT/model.omsim for a split export: one `.omsim` per chip (`write_omsim`, its acceptance
    and memory check per chip: a chip whose stage does not fit is refused by name) and
    pipeline.json. Returns pipeline.json's content."""
    from ascend_adapt.backends.sim.artifact import write_omsim
    from ascend_adapt.om_convert.builder.llm import load_manifest
    from ascend_adapt.sim.acceptance import SimulatorRejection

    exp = Path(export_dir)
    export = load_manifest(exp)
    out = Path(out)
    out.mkdir()
    stages = []
    for st in export["stages"]:
        view = stage_view(export, st["index"])
        graphs = {k: exp / export["graphs"][g]["file"] for k, g in st["graphs"].items()}
        opts = {k: atc_options[g] for k, g in st["graphs"].items()}
        name = f"stage{st['index']}.omsim"
        label = chip_label(st, target.name)
        try:
            art = write_omsim(out / name, graphs, target, opts, copy_from=exp, link=True,
                              extra={"export": view, "stage": st})
        except SimulatorRejection as e:  # name the chip: each chip is checked on its own
            raise SimulatorRejection(e.problems, e.target, label) from None
        mem = art.manifest.get("acceptance", {}).get("memory") or {}
        stages.append({**st, "omsim": name, "label": label, "om": {k: f"{g}.om" for k, g in st["graphs"].items()},
                       "memory": mem})
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "simulated": True, "target": target.name,
            "chips": len(stages), "stages": stages, "handover": export["handover"],
            "note": "one simulator artifact per chip; the runtime hands the hidden state from chip to chip "
                    "through the host (ascend_adapt.runtime.pipeline)"}
    (out / PIPELINE).write_text(json.dumps(info, indent=1, default=str))
    return info
