"""The simulator artifact: `NAME.omsim/`, what stands in for an `.om` where there is no ATC.

It is a directory (never named `.om`) written atomically:

    NAME.omsim/
      manifest.json      format, "simulated": true, target, soc_version, target_file (the target's
                         JSON, absolute: `OmSim.resolve_target` loads it where the name is not
                         registered, e.g. a target given to convert as a path), per-graph settings
                         (input shapes, gears, precision mode, keep_dtype, mixlist), the exact
                         ATC command per graph, checksums of the graphs and weights (here and at
                         the source), the acceptance result and a cost summary
      README.txt         what this is (simulated) and how to build the real OMs
      atc.sh             the ATC commands, relocated to the files in this directory
      <graph>.onnx ...   the final graphs (prefill.onnx, decode.onnx)
      weights.bin ...    their external data, at the same relative locations: a hard link of
                         the source file with link=True (the default of `omsim_from_export`, so a
                         convert output holds its weights once on disk; a link survives moving
                         the directory), a copy otherwise or where the filesystem refuses links
      keep_dtype.cfg / modify_mixlist.json   when the settings use them
      simulated.imod     a 256-byte `IMOD` ModelFileHeader stub (platform "SIMULATED") + the
                         manifest as payload, in the OM header layout of reference §5.3
      config.json, tokenizer files   copied from `copy_from` (the export directory)

`write_omsim` runs the simulator's acceptance first (as ATC would fail) and writes nothing when
the model is refused. `read_omsim` verifies the checksums.

    >>> art = write_omsim("out/llama.omsim", {"prefill": "exp/prefill.onnx", "decode": "exp/decode.onnx"},
    ...                   "Ascend310P3", {"prefill": prefill_opts, "decode": decode_opts})
    >>> read_omsim("out/llama.omsim").settings("decode").precision_mode
    'force_fp16'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ascend_adapt.errors import ConfigError
from ascend_adapt.fsutil import atomic_output

FORMAT = "ascend-adapt.omsim"
FORMAT_VERSION = 1
SUFFIX = ".omsim"
MANIFEST = "manifest.json"
HEADER_FILE = "simulated.imod"
NOTICE = ("SIMULATED artifact of the ascend-adapt CPU simulator: not an OM, never ran on an NPU. "
          "Build the real OMs with atc.sh on a CANN host.")
_SAMPLE = 1 << 20  # bytes per sampled block of a weights file

# ---------------------------------------------------------------------------- IMOD header
# ge::ModelFileHeader (hicann/ge inc/framework/common/framework_types_internal.h, reference §5.3)
IMOD_MAGIC = 0x444F4D49            # b"IMOD" little-endian
IMOD_HEADER_LEN = 256
IMOD_VERSION = 0x20000000
_IMOD = struct.Struct("<III64sIBBBB32sI32sII20sB3sQBB62s")
assert _IMOD.size == IMOD_HEADER_LEN


@dataclass(frozen=True)
class OmHeader:
    """The fields of an OM file header (real or simulated)."""

    magic: int
    headsize: int
    version: int
    length: int
    is_encrypt: int
    is_checksum: int
    modeltype: int
    genmode: int
    name: str
    ops: int
    userdefineinfo: str
    om_ir_version: int
    model_num: int
    platform_version: str
    platform_type: int
    model_length: int
    need_check_os_cpu_info: int
    is_unknow_model: int

    @property
    def simulated(self) -> bool:
        return self.platform_version == "SIMULATED"


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def pack_imod_header(payload_len: int, *, name: str = "simulated", ops: int = 0, model_num: int = 1,
                     is_unknow_model: bool = False) -> bytes:
    """A 256-byte ModelFileHeader stub marked platform "SIMULATED"."""
    return _IMOD.pack(IMOD_MAGIC, IMOD_HEADER_LEN, IMOD_VERSION, b"\0" * 64, payload_len, 0, 0, 1, 0,
                      name.encode()[:31], ops, b"ascend-adapt simulated"[:31], 0, model_num, b"SIMULATED",
                      0, b"\0\0\0", payload_len, 0, int(is_unknow_model), b"\0" * 62)


def read_om_header(path: str | os.PathLike) -> OmHeader:
    """Parse the 256-byte header of an `.om` file or of a simulator stub.

    Raises:
        ConfigError: the file is shorter than a header or does not start with `IMOD`.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        raw = fh.read(IMOD_HEADER_LEN)
    if len(raw) < IMOD_HEADER_LEN or raw[:4] != b"IMOD":
        raise ConfigError(f"'{p}' is not an OM file (no 'IMOD' header)",
                          "pass the .om that ATC wrote (or an .omsim directory to the simulator)")
    f = _IMOD.unpack(raw)
    return OmHeader(f[0], f[1], f[2], f[4], f[5], f[6], f[7], f[8], _cstr(f[9]), f[10], _cstr(f[11]), f[12], f[13],
                    _cstr(f[14]), f[15], f[17], f[18], f[19])


# ---------------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sampled_sha256(path: str | os.PathLike, block: int = _SAMPLE) -> str:
    """sha256 of (size, first, middle and last `block` bytes): cheap identity of a big weights file."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as fh:
        for off in sorted({0, max(0, size // 2 - block // 2), max(0, size - block)}):
            fh.seek(off)
            h.update(fh.read(block))
    return h.hexdigest()


def _weights_facts(p: Path) -> dict:
    st = p.stat()
    return {"size": st.st_size, "mtime": st.st_mtime, "sha256_sampled": sampled_sha256(p),
            "sample": f"size + 3 blocks of {_SAMPLE} bytes"}


# ---------------------------------------------------------------------------- reading
@dataclass
class OmSim:
    """An `.omsim` artifact read back.

    Attributes:
        path: the directory.
        manifest: the parsed manifest.json.
    """

    path: Path
    manifest: dict

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def soc_version(self) -> str:
        return self.manifest["soc_version"]

    def resolve_target(self):
        """The Target the artifact was written for: the registered target of its name, else (a
        target given as a file path to `convert --soc`, not registered in this process) the
        target file the manifest recorded (`target_file`), loaded, not registered.

        Raises:
            ConfigError: the name is unknown here and the recorded file is gone, or now declares
                another name (the message names the artifact, the target and the file).
        """
        from ascend_adapt.targets import TARGETS, load_target_file

        name = self.target
        if name in TARGETS:
            return TARGETS.get(name)
        recorded = self.manifest.get("target_file") or ""
        known = ", ".join(TARGETS.names())
        if not recorded:
            raise ConfigError(f"simulator artifact '{self.path}' was written for target '{name}', which is not "
                              f"registered here (known: {known}), and its manifest records no target file",
                              f"register the target file first (ascend_adapt.targets.register_target_file, or put "
                              f"{name}.json in a directory of $ASCEND_ADAPT_TARGETS_PATH)")
        f = Path(recorded)
        if not f.is_file():
            raise ConfigError(f"simulator artifact '{self.path}' was written for target '{name}' from the file "
                              f"'{f}', which is gone, and '{name}' is not registered here (known: {known})",
                              f"restore '{f}', or put {name}.json in a directory of $ASCEND_ADAPT_TARGETS_PATH "
                              f"(or register it with ascend_adapt.targets.register_target_file)")
        t = load_target_file(f)
        if t.name != name:
            raise ConfigError(f"simulator artifact '{self.path}' was written for target '{name}' from the file "
                              f"'{f}', which now declares target '{t.name}'",
                              f"restore the file's target '{name}', or convert again for '{t.name}'")
        return t

    @property
    def graph_names(self) -> list[str]:
        return list(self.manifest["graphs"])

    def graph_path(self, name: str | None = None) -> Path:
        """Path of graph `name` (the only graph when None)."""
        return self.path / self._entry(name)["file"]

    def _entry(self, name: str | None) -> dict:
        graphs = self.manifest["graphs"]
        if name is None:
            if len(graphs) != 1:
                raise ConfigError(f"'{self.path}' holds graphs {', '.join(graphs)}", "say which one (graph=...)")
            name = next(iter(graphs))
        if name not in graphs:
            raise ConfigError(f"'{self.path}' has no graph '{name}'", f"use one of: {', '.join(graphs)}")
        return graphs[name]

    def settings(self, name: str | None = None):
        """The SimSettings graph `name` was accepted with."""
        from ascend_adapt.sim.settings import SimSettings

        return SimSettings.from_dict(self._entry(name)["settings"])

    def atc_command(self, name: str | None = None) -> str | None:
        return self._entry(name).get("atc_command")

    def stale_sources(self) -> list[str]:
        """Source files (graphs, weights) that changed since the artifact was written
        (missing sources are not reported)."""
        changed = []
        for rec in self.manifest.get("sources", {}).values():
            p = Path(rec["path"])
            if not p.exists():
                continue
            if "sha256" in rec and sha256_file(p) != rec["sha256"]:
                changed.append(str(p))
            elif "size" in rec and (p.stat().st_size != rec["size"] or sampled_sha256(p) != rec["sha256_sampled"]):
                changed.append(str(p))
        return changed

    def verify(self) -> None:
        """Check the files in the artifact against the manifest's checksums.

        Raises:
            ConfigError: a file is missing or differs.
        """
        for rel, rec in self.manifest.get("files", {}).items():
            p = self.path / rel
            if not p.is_file():
                raise ConfigError(f"simulator artifact '{self.path}' lacks '{rel}'", "rebuild it with write_omsim")
            if "sha256" in rec:
                ok = sha256_file(p) == rec["sha256"]
            else:
                ok = p.stat().st_size == rec["size"] and sampled_sha256(p) == rec["sha256_sampled"]
            if not ok:
                raise ConfigError(f"simulator artifact '{self.path}': '{rel}' does not match its checksum",
                                  "the artifact was modified after it was written; rebuild it with write_omsim")


def is_omsim(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def read_omsim(path: str | os.PathLike, *, verify: bool = True) -> OmSim:
    """Read an `.omsim` artifact (and verify its checksums unless `verify=False`).

    Raises:
        ConfigError: not an artifact, an unknown format version, or a checksum mismatch.
    """
    p = Path(path)
    if p.suffix == ".om" or (p.is_file() and p.read_bytes()[:4] == b"IMOD"):
        raise ConfigError(f"'{p}' is a real OM file, not a simulator artifact",
                          "run it with the 'acl' backend on an Ascend host; the simulator reads NAME.omsim")
    if not is_omsim(p):
        raise ConfigError(f"'{p}' is not a simulator artifact (no {MANIFEST})",
                          "write one with ascend_adapt.backends.sim.artifact.write_omsim (ascend-adapt convert)")
    try:
        manifest = json.loads((p / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"'{p / MANIFEST}' is not valid JSON: {exc}", "rebuild the artifact") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"'{p}' has format {manifest.get('format')} v{manifest.get('format_version')}",
                          f"this version reads {FORMAT} v{FORMAT_VERSION}; rebuild the artifact")
    art = OmSim(p, manifest)
    if verify:
        art.verify()
    return art


# ---------------------------------------------------------------------------- writing
_COPY_SUFFIXES = (".json", ".model", ".txt", ".tiktoken", ".py")
_COPY_SKIP = {MANIFEST}


def _settings_for(name: str, target: Any, atc_options: Any, settings: Any):
    """(SimSettings, AtcOptions or None) of graph `name`."""
    from ascend_adapt.sim.settings import SimSettings

    if isinstance(settings, Mapping) and name in settings:
        settings = settings[name]
    elif isinstance(settings, Mapping) and not (set(settings) & set(SimSettings.__dataclass_fields__)):
        settings = None  # a per-graph dict without this graph
    if isinstance(atc_options, Mapping):
        atc_options = atc_options.get(name)
    if settings is None:
        if atc_options is not None:
            return SimSettings.from_atc_options(atc_options, target=target.name), atc_options
        return SimSettings(target=target.name, soc_version=target.soc_version), None
    if isinstance(settings, Mapping):
        settings = SimSettings.from_dict({"target": target.name, **settings})
    changes: dict[str, Any] = {}
    if settings.target != target.name:
        changes["target"] = target.name
    if not settings.atc_command and hasattr(atc_options, "to_command"):
        changes["atc_command"] = atc_options.to_command()
    return (settings.replace(**changes) if changes else settings), atc_options


def _relocated_command(options: Any, name: str, graph_file: str, extra: dict[str, str]) -> str | None:
    """The ATC command with --model / --output / config files pointing into the artifact."""
    if options is None or not hasattr(options, "replace"):
        return None
    changes = {"model": graph_file, "output": f"om/{name}"}
    for flag, rel in extra.items():
        if getattr(options, flag, None) is not None or flag in ("keep_dtype", "modify_mixlist"):
            changes[flag] = rel
    try:
        return options.replace(**changes).to_command()
    except Exception:  # noqa: BLE001 - fall back to the command as given
        return options.to_command() if hasattr(options, "to_command") else None


def _default_command(settings: Any, name: str, graph_file: str, extra: dict[str, str]) -> str:
    """An ATC command line derived from the settings alone (no AtcOptions given)."""
    argv = ["atc", "--framework=5", f"--model={graph_file}", f"--output=om/{name}",
            f"--soc_version={settings.soc_version or settings.target}"]
    if settings.input_shape:
        shape = ";".join(f"{k}:{','.join(f'{d[0]}~{d[1]}' if isinstance(d, tuple) else str(d) for d in v)}"
                         for k, v in settings.input_shape.items())
        argv += ["--input_format=ND", f"--input_shape={shape}"]
    if settings.gears is not None:
        if settings.gears.flag == "dynamic_batch_size":
            argv.append(f"--dynamic_batch_size={','.join(str(v[0]) for v in settings.gears.values)}")
        else:
            argv.append(f"--{settings.gears.flag}={';'.join(','.join(map(str, v)) for v in settings.gears.values)}")
    if settings.precision_mode_v2:
        argv.append(f"--precision_mode_v2={settings.precision_mode_v2}")
    else:
        argv.append(f"--precision_mode={settings.precision_mode}")
    for flag, rel in extra.items():
        argv.append(f"--{flag}={rel}")
    return shlex.join(argv)


def write_omsim(out: str | os.PathLike, graphs: Mapping[str, str | os.PathLike], target: Any,
                atc_options: Any = None, *, settings: Any = None, copy_from: str | os.PathLike | None = None,
                force: bool = False, check: bool = True, cost: bool = True, link: bool = False,
                extra: Mapping[str, Any] | None = None):
    """Write a simulator artifact `out` (a directory ending in `.omsim`).

    Args:
        out: the artifact path; `.omsim` is appended when missing. Never `.om`.
        graphs: {graph name: .onnx path}, e.g. {"prefill": ..., "decode": ...}. External data
            files are copied beside the graphs at their relative locations (shared files once).
        target: Target or target name.
        atc_options: `AtcOptions` (one, or {graph name: AtcOptions}): precision, keep_dtype,
            modify_mixlist, --input_shape, gears and the exact command come from them.
        settings: `SimSettings` (one, a dict, or {graph name: ...}) instead of / over atc_options.
        copy_from: a directory whose config.json, tokenizer and other small top-level files are
            copied (so every artifact directory can load the tokenizer).
        force: replace an existing artifact.
        check: run the simulator's acceptance first; a refused model raises SimulatorRejection
            and nothing is written.
        cost: store a cost summary per graph in the manifest.
        link: hard-link weights files instead of copying them; falls back to a copy where the
            link is refused (another filesystem, no link support). A hard link is a second name
            of the same bytes: the artifact stays valid when the source directory is moved or
            deleted, and the checksums in the manifest still catch an in-place edit.
        extra: more manifest fields (e.g. the export's seq_len / max_len / spec).

    Returns:
        The OmSim read back from the written directory.
    """
    from ascend_adapt.sim.acceptance import check_graphs
    from ascend_adapt.sim.graph import load_model
    from ascend_adapt.targets import resolve_target

    target = resolve_target(target)
    out = Path(out)
    if out.suffix == ".om":
        raise ConfigError(f"'{out}': the simulator never writes .om files", "name the artifact NAME.omsim")
    if out.suffix != SUFFIX:
        out = out.with_name(out.name + SUFFIX)
    if not graphs:
        raise ConfigError("write_omsim needs at least one graph", "pass {'decode': 'decode.onnx', ...}")
    if not isinstance(atc_options, Mapping) and atc_options is not None and len(graphs) > 1:
        raise ConfigError("one AtcOptions given for several graphs", "pass {graph name: AtcOptions}")

    srcs = {name: Path(p) for name, p in graphs.items()}
    models, per_settings, per_options = {}, {}, {}
    for name, p in srcs.items():
        if not p.is_file():
            raise ConfigError(f"graph '{name}': '{p}' not found", "export the graphs first")
        models[name] = load_model(p)
        per_settings[name], per_options[name] = _settings_for(name, target, atc_options, settings)
    report = check_graphs(models, target, per_settings)
    if check:
        report.raise_if_rejected(", ".join(srcs))

    placed = _placement(srcs, models)
    costs = _graph_costs(models, target, per_settings) if cost else {}

    with atomic_output(out, force=force, is_dir=True, inputs=[*placed.values(), copy_from]) as tmp:
        files, sources = _place_files(tmp, placed, link)
        copied = _copy_small_files(tmp, copy_from, placed)
        graphs_m, script = {}, list(_SCRIPT_HEAD)
        for name in srcs:
            graphs_m[name], relocated = _graph_entry(tmp, name, models[name], per_settings[name], per_options[name],
                                                     costs.get(name))
            script.append(relocated)
        (tmp / "atc.sh").write_text("\n".join(script) + "\n", encoding="utf-8")
        os.chmod(tmp / "atc.sh", 0o755)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "simulated": True,
            "notice": NOTICE,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": _version(),
            "target": target.name,
            "soc_version": target.soc_version,
            "target_file": str(Path(target.source_file).resolve()) if target.source_file else "",
            "graphs": graphs_m,
            "files": files,
            "sources": sources,
            "copied": copied,
            "acceptance": report.to_dict(),
            "atc_script": "atc.sh",
            **dict(extra or {}),
        }
        text = json.dumps(manifest, indent=1, sort_keys=False, default=str)
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        payload = text.encode()
        ops = sum(g["nodes"] for g in graphs_m.values())
        (tmp / HEADER_FILE).write_bytes(pack_imod_header(len(payload), name=out.stem, ops=ops,
                                                         model_num=len(graphs_m)) + payload)
        (tmp / "README.txt").write_text(
            f"{NOTICE}\n\nTarget: {target.name} (soc_version {target.soc_version}), simulated.\n"
            f"Graphs: {', '.join(g['file'] for g in graphs_m.values())}. Settings and checksums: {MANIFEST}.\n"
            "Run it with the simulator: ascend_adapt.runtime.runners.SimRunner(this_dir, graph=...) or the\n"
            "'sim' backend. Build real OMs on a CANN host: sh atc.sh\n", encoding="utf-8")
    return read_omsim(out, verify=False)


_SCRIPT_HEAD = ("#!/bin/sh", f"# {NOTICE}", "# Run on a host with the CANN toolkit (atc on PATH).",
                "set -e", 'cd "$(dirname "$0")"', "mkdir -p om")


def _placement(srcs: Mapping[str, Path], models: Mapping[str, Any]) -> dict[str, Path]:
    """{relative path in the artifact: source file}: each graph as NAME.onnx at the top level, its
    external data at the same relative location (a file shared by graphs: once).

    Raises:
        ConfigError: two graphs use different files of one name; an external data file is missing.
    """
    from ascend_adapt.sim.graph import external_data_files

    placed: dict[str, Path] = {}
    for name, p in srcs.items():
        placed[f"{name}.onnx"] = p
        for loc in external_data_files(models[name]):
            src = (p.parent / loc).resolve()
            if loc in placed and placed[loc].resolve() != src:
                raise ConfigError(f"graphs use different files named '{loc}' ({placed[loc]} and {src})",
                                  "export the graphs into one directory so they share their weights file")
            if not src.is_file():
                raise ConfigError(f"graph '{name}' references external data '{loc}', not found at {src}",
                                  "keep the .onnx files beside their weights files")
            placed[loc] = src
    return placed


def _graph_costs(models: Mapping[str, Any], target: Any, per_settings: Mapping[str, Any]) -> dict[str, dict]:
    """The simulated cost summary per graph (a failure is recorded, it never blocks the artifact)."""
    from ascend_adapt.sim.cost import estimate_cost

    costs = {}
    for name, m in models.items():
        try:
            costs[name] = estimate_cost(m, target, per_settings[name], graph_name=name).summary()
        except Exception as exc:  # noqa: BLE001 - a cost failure must not block the artifact
            costs[name] = {"simulated": True, "error": f"{type(exc).__name__}: {exc}"}
    return costs


def _place_files(tmp: Path, placed: Mapping[str, Path], link: bool) -> tuple[dict, dict]:
    """Copy (weights: hard-link with `link`) the placed files into `tmp`; return the manifest's
    `files` (checksums here: full for graphs, sampled for weights) and `sources` entries."""
    files: dict[str, dict] = {}
    sources: dict[str, dict] = {}
    for rel, src in placed.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link and not rel.endswith(".onnx"):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        else:
            shutil.copy2(src, dst)
        if rel.endswith(".onnx"):
            files[rel] = {"sha256": sha256_file(dst), "size": dst.stat().st_size}
            sources[rel] = {"path": str(src.resolve()), "sha256": files[rel]["sha256"]}
        else:
            facts = _weights_facts(dst)
            files[rel] = {k: facts[k] for k in ("size", "sha256_sampled", "sample")}
            sources[rel] = {"path": str(src.resolve()), **_weights_facts(src)}
    return files, sources


def _copy_small_files(tmp: Path, copy_from, placed: Mapping[str, Path]) -> list[str]:
    """Copy config.json, the tokenizer and other small top-level files of `copy_from`."""
    copied = []
    if copy_from is not None:
        for f in sorted(Path(copy_from).iterdir()):
            if (f.is_file() and f.suffix in _COPY_SUFFIXES and f.name not in _COPY_SKIP
                    and f.name not in placed and f.stat().st_size < 64 << 20):
                shutil.copy2(f, tmp / f.name)
                copied.append(f.name)
    return copied


def _graph_entry(tmp: Path, name: str, m: Any, s: Any, options: Any, cost: dict | None) -> tuple[dict, str]:
    """The manifest entry of graph `name` and its ATC command relocated into the artifact (the
    keep_dtype / mixlist files it names are written into `tmp`)."""
    from ascend_adapt.sim.graph import external_data_files, graph_inputs, graph_outputs

    graph_file = f"{name}.onnx"
    cfg: dict[str, str] = {}
    if s.keep_dtype and not s.keeps_origin:
        fn = f"{name}.keep_dtype.cfg"
        (tmp / fn).write_text("\n".join(s.keep_dtype) + "\n", encoding="utf-8")
        cfg["keep_dtype"] = fn
    if s.modify_mixlist:
        fn = f"{name}.modify_mixlist.json"
        (tmp / fn).write_text(json.dumps(s.modify_mixlist, indent=1), encoding="utf-8")
        cfg["modify_mixlist"] = fn
    relocated = _relocated_command(options, name, graph_file, cfg) or _default_command(s, name, graph_file, cfg)

    def tensors(infos) -> dict:
        return {k: {"dtype": v.elem_type, "shape": list(v.shape) if v.shape is not None else None}
                for k, v in infos.items()}

    entry = {
        "file": graph_file,
        "inputs": tensors(graph_inputs(m)),
        "outputs": tensors(graph_outputs(m)),
        "external_data": external_data_files(m),
        "nodes": len(m.graph.node),
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "settings": s.to_dict(),
        "input_shape": s.to_dict()["input_shape"],
        "gears": s.to_dict()["gears"],
        "precision_mode": s.precision_mode,
        "keep_dtype": list(s.keep_dtype),
        "atc_command": s.atc_command or relocated,
        "atc_command_relocated": relocated,
        "cost": cost,
    }
    return entry, relocated


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"ascend-adapt {version('ascend-adapt')}"
    except Exception:  # noqa: BLE001
        return "ascend-adapt"


def omsim_from_export(export_dir: str | os.PathLike, out: str | os.PathLike, target: Any, *,
                      precision_mode: str | None = None, keep_dtype: Any = "export",
                      atc_options: Mapping[str, Any] | None = None, modify_mixlist: Mapping | None = None,
                      force: bool = False, check: bool = True, cost: bool = True, link: bool = True):
    """Write the `.omsim` of an LLM export directory (`build_llm_onnx` output).

    Every graph's --input_shape is pinned to the export's static shapes; keep_dtype defaults to
    the export's fp32-island node lists (what the convert step passes to ATC). The export's
    config / tokenizer files and export.json (spec, B, S, M) are copied, and export.json is also
    stored in the manifest (key "export") for the "sim" backend.

    Args:
        export_dir: the export directory (export.json, prefill.onnx, decode.onnx, weights.bin).
        out: the artifact path (NAME.omsim).
        target: Target or target name.
        precision_mode: v1 or v2 name (default force_fp16, ATC's inference default).
        keep_dtype: "export", a list for both graphs, {graph: [...]}, or None (none).
        atc_options: {graph: AtcOptions} to take settings and exact commands from instead.
        modify_mixlist: mixlist for allow_mix_precision modes.
        link: hard-link the export's weights.bin into the artifact (default: one copy of the
            weights on disk; a copy where links are refused), see `write_omsim`.
    """
    from ascend_adapt.contract import graph_input_shapes
    from ascend_adapt.om_convert.builder.llm import load_manifest
    from ascend_adapt.sim.settings import GearSpec, SimSettings
    from ascend_adapt.targets import resolve_target

    target = resolve_target(target)
    d = Path(export_dir)
    export = load_manifest(d)
    graphs = {k: d / g["file"] for k, g in export["graphs"].items()}
    settings = None
    if atc_options is None:
        settings = {}
        for k, g in export["graphs"].items():
            if isinstance(keep_dtype, str):
                keep = export.get("keep_dtype", {}).get(k, []) if keep_dtype == "export" else [keep_dtype]
            elif isinstance(keep_dtype, Mapping):
                keep = keep_dtype.get(k, [])
            else:
                keep = list(keep_dtype or [])
            shapes, dims = graph_input_shapes(export, k, target.soc_version)
            settings[k] = SimSettings(target=target.name, soc_version=target.soc_version,
                                      precision_mode=precision_mode, keep_dtype=tuple(keep),
                                      modify_mixlist=modify_mixlist, input_shape=shapes,
                                      gears=GearSpec("dynamic_dims", dims) if dims else None)
    return write_omsim(out, graphs, target, atc_options, settings=settings, copy_from=d, force=force, check=check,
                       cost=cost, link=link, extra={"export": export})
