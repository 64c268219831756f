"""Published decode measurements, as target data.

A target file may list the public LLM decode figures measured on it under `published_decode`;
`ascend_adapt.estimate.published` fits the cost model's memory efficiency on the one marked
`"calibrates": true` for each target family and checks the estimate against the others. Each
entry names the HF config it was measured with: a file of `data/models/` (or beside the target
file, in a `models/` folder), so the estimate can be run in the same setting.

    {"key": "910b-llama2-7b", "model": "Llama-2-7B fp16", "config": "Llama-2-7b-hf",
     "precision": "fp16", "seq_len": 256, "batch": 1, "chips": "min", "tok_s": [16.6, 16.6],
     "stack": "...", "source": "https://...", "confidence": "S", "note": "...", "calibrates": true}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

_KEYS = {"key", "model", "config", "precision", "seq_len", "batch", "chips", "tok_s", "stack", "source",
         "confidence", "note", "calibrates"}
_REQUIRED = _KEYS - {"note"}
_PRECISIONS = ("fp32", "fp16", "w8a16", "w4a16")


@dataclass(frozen=True)
class PublishedFigure:
    """One public decode measurement and the estimate settings that match it.

    Attributes:
        key: short id, unique over all targets.
        model: what was measured.
        config: the HF config (read from `config_name`) to estimate it with.
        target: the target profile the figure belongs to (the file it is listed in).
        precision: "fp16" / "w8a16" / "w4a16" / "fp32".
        seq_len: context the decode runs at (prompt + generated).
        batch: batch size.
        chips: "card" when the measurement used every chip of a card, else "min".
        tok_s: (low, high) measured tokens/s (low == high for a single figure).
        stack: the software stack measured.
        source: where the figure was published. confidence: V / S / M, as for every figure.
        note: what differs from our setting.
        used_for_calibration: whether its family's memory efficiency is fitted on it.
        config_name: the model config file's name (without `.json`).
    """

    key: str
    model: str
    config: Mapping[str, Any]
    target: str
    precision: str
    seq_len: int
    batch: int
    chips: str
    tok_s: tuple[float, float]
    stack: str
    source: str
    note: str
    used_for_calibration: bool
    confidence: str = "M"
    config_name: str = ""


def _model_config(name: str, where: str, search_dirs: Sequence[Path]) -> Mapping[str, Any]:
    for d in search_dirs:
        p = d / "models" / f"{name}.json"
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"model config '{p}' (named by {where}) is not valid JSON: {exc}",
                                  "fix the JSON syntax") from exc
            if not isinstance(data, dict):
                raise ConfigError(f"model config '{p}' must hold a JSON object (an HF config.json)", "fix it")
            return MappingProxyType(data)
    raise ConfigError(f"{where}: published figure config '{name}' not found",
                      f"put {name}.json (the model's HF config.json) in "
                      f"{' or '.join(str(d / 'models') for d in search_dirs)}")


def parse_published(raw: Any, target: str, where: str, search_dirs: Sequence[Path]) -> tuple[PublishedFigure, ...]:
    """The `published_decode` list of a target file (after `extends`, which does not inherit it)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'published_decode' must be a list of figures", "see docs/targets.md")
    out = []
    for i, f in enumerate(raw):
        at = f"{where}: published_decode[{i}]"
        if not isinstance(f, dict):
            raise ConfigError(f"{at} must be an object", "see docs/targets.md")
        missing, extra = sorted(_REQUIRED - set(f)), sorted(set(f) - _KEYS)
        if missing or extra:
            raise ConfigError(f"{at} ({f.get('key', '?')}): " + "; ".join(
                ([f"missing {missing}"] if missing else []) + ([f"unknown keys {extra}"] if extra else [])),
                f"keys: {sorted(_KEYS)} (note optional)")
        tok = f["tok_s"]
        ok = (isinstance(tok, list) and len(tok) == 2 and all(isinstance(x, (int, float)) for x in tok)
              and 0 < tok[0] <= tok[1])
        if not ok:
            raise ConfigError(f"{at} ({f['key']}): tok_s must be [low, high] with 0 < low <= high",
                              "write [6.32, 6.32] for a single figure")
        if f["chips"] not in ("card", "min") or f["precision"] not in _PRECISIONS:
            raise ConfigError(f"{at} ({f['key']}): chips must be 'card' or 'min' and precision one of "
                              f"{', '.join(_PRECISIONS)}", "fix the entry")
        if f["confidence"] not in ("V", "S", "M") or not f["source"]:
            raise ConfigError(f"{at} ({f['key']}): needs a source and confidence V, S or M", "say where it comes from")
        out.append(PublishedFigure(
            key=str(f["key"]), model=str(f["model"]), config=_model_config(str(f["config"]), at, search_dirs),
            target=target, precision=f["precision"], seq_len=int(f["seq_len"]), batch=int(f["batch"]),
            chips=f["chips"], tok_s=(float(tok[0]), float(tok[1])), stack=str(f["stack"]), source=str(f["source"]),
            note=str(f.get("note", "")), used_for_calibration=bool(f["calibrates"]), confidence=f["confidence"],
            config_name=str(f["config"])))
    return tuple(out)
