"""Open a Hugging Face (or Meta) model directory and stream its tensors.

Layouts, detected in this order:
- `model.safetensors.index.json` + shards, or one `model.safetensors` (any `*.safetensors` when
  there is neither);
- `pytorch_model.bin.index.json` + shards, or one `pytorch_model.bin` — loaded with
  `torch.load(mmap=True, weights_only=True)`: listing maps the files but reads no tensor data;
  a pickle that tries to run code is refused;
- Meta's original Llama layout: `consolidated.NN.pth` + `params.json`; model-parallel shards are
  concatenated per tensor on demand (dim 0 for wq/wk/wv/w1/w3/output, dim 1 for wo/w2/
  tok_embeddings, replicated norms).

Listing (`infos()`) never reads tensor data; `get(name)` materializes exactly one tensor as a numpy
array (bfloat16 via ml_dtypes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .._optional import require
from ..errors import CheckpointError
from .config import ConfigDict, load_config_json, parse_strict_json
from .dtypes import canonical_name, numpy_dtype
from .safetensors_io import TensorInfo, read_safetensors_header, read_tensor

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"

# Meta consolidated shards: which dim a model-parallel tensor is split on.
_META_CONCAT_DIM = [
    (re.compile(r"(^|\.)(wq|wk|wv|w1|w3)\.weight$|^output\.weight$"), 0),
    (re.compile(r"(^|\.)(wo|w2)\.weight$|^tok_embeddings\.weight$"), 1),
]


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from `path` (strict JSON: no NaN / Infinity), as a CheckpointError if not."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = parse_strict_json(text)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc})", "fix or re-download the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object", "fix or re-download the file")
    return data


def _torch_load(path: Path):
    torch = require("torch", purpose=f"reading {path.name} (torch pickle checkpoints)")
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as exc:  # UnpicklingError, RuntimeError from zip reader, …
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "UnpicklingError" in type(exc).__name__:
            raise CheckpointError(
                f"{path}: refused to load: the pickle tries to construct or call objects other than tensors",
                "only load checkpoints you trust; convert trusted ones to safetensors, "
                "this tool never runs code from a checkpoint",
            ) from None
        if "mmap" in text or "zip" in text.lower() or "central directory" in text:
            raise CheckpointError(
                f"{path}: not a readable torch zip checkpoint ({text.splitlines()[0][:200]})",
                "the file is truncated, corrupt, or in torch's legacy (pre-1.6) format; re-save it with "
                "torch.save or convert it to safetensors",
            ) from None
        raise CheckpointError(f"{path}: cannot load ({type(exc).__name__}: {text[:300]})") from None


def _torch_to_numpy(t) -> np.ndarray:
    torch = __import__("torch")
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("bfloat16")).copy()
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        name = str(t.dtype).replace("torch.", "")
        return t.view(torch.uint8).numpy().view(numpy_dtype(name)).copy()
    return t.numpy().copy()


class TensorIndex:
    """Name lookups over `self._infos` (name → TensorInfo), shared by every streaming reader."""

    _infos: dict[str, TensorInfo]

    def infos(self) -> dict[str, TensorInfo]:
        """Every tensor's name, shape, dtype and file, without reading data."""
        return dict(self._infos)

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)


class CheckpointReader(TensorIndex):
    """A model directory opened for streaming.

    Attributes:
        path: the directory.
        layout: "safetensors", "bin" or "meta".
        config: config.json (or params.json for the Meta layout) as a `ConfigDict` (a dict that
            names its file); empty when there is none and it is not required, or `read_config`
            is False.
        shards: the data files, in order.

    Args:
        path: the model directory.
        require_config: refuse a directory without config.json (params.json for Meta's layout).
        read_config: False lists the weights without reading the config (`load_config()` reads
            it later; `inspect` does this to report a bad config beside what it could read).
    """

    def __init__(self, path, require_config: bool = True, read_config: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such directory")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a file; pass the model directory that holds config.json")
        self._torch_cache: dict[Path, dict] = {}
        self._meta_parts: dict[str, list[TensorInfo]] = {}
        self.layout, self.shards, self._infos = self._scan()
        self.config = (self.load_config(require_config) if read_config
                       else ConfigDict({}, str(self.path / "config.json")))

    # ---- layout detection -------------------------------------------------------------------
    def load_config(self, required: bool = True) -> ConfigDict:
        """Read config.json (params.json for Meta's layout) as strict JSON; sets `self.config`.

        Raises:
            CheckpointError: it is missing and `required`.
            ConfigError: it is not UTF-8, strict JSON or a JSON object (naming the file).
        """
        cfg = self.path / "config.json"
        if cfg.exists():
            self.config = load_config_json(cfg, "config.json")
        elif self.layout == "meta":
            self.config = load_config_json(self.path / "params.json", "params.json")
        elif required:
            raise CheckpointError(
                f"{self.path}: config.json is missing",
                "copy the model's config.json into the directory (it comes with every HF checkpoint)",
            )
        else:
            self.config = ConfigDict({}, str(cfg))
        return self.config

    def _scan(self):
        p = self.path
        if (p / ST_INDEX).exists():
            return ("safetensors", *self._scan_indexed(p / ST_INDEX, self._st_file_infos))
        if (p / "model.safetensors").exists():
            files = [p / "model.safetensors"]
            return "safetensors", files, self._merge(files, self._st_file_infos)
        if (p / BIN_INDEX).exists():
            return ("bin", *self._scan_indexed(p / BIN_INDEX, self._bin_file_infos))
        if (p / "pytorch_model.bin").exists():
            files = [p / "pytorch_model.bin"]
            return "bin", files, self._merge(files, self._bin_file_infos)
        meta = sorted(p.glob("consolidated.*.pth"))
        if meta:
            if not (p / "params.json").exists():
                raise CheckpointError(f"{p}: consolidated.*.pth found but params.json is missing",
                                      "Meta's original layout needs params.json beside the shards")
            return "meta", meta, self._scan_meta(meta)
        other = sorted(p.glob("*.safetensors"))
        if other:
            return "safetensors", other, self._merge(other, self._st_file_infos)
        raise CheckpointError(
            f"{p}: no weights found",
            "expected model.safetensors, model-*-of-*.safetensors + model.safetensors.index.json, "
            "pytorch_model.bin (+ index), or consolidated.*.pth + params.json",
        )

    def _st_file_infos(self, f: Path) -> dict[str, TensorInfo]:
        return read_safetensors_header(f)[0]

    def _bin_file_infos(self, f: Path) -> dict[str, TensorInfo]:
        sd = self._torch_state(f)
        out = {}
        for name, t in sd.items():
            if not hasattr(t, "shape"):
                continue
            try:
                dtype = canonical_name(t.dtype)
            except CheckpointError:
                raise CheckpointError(f"{f}: tensor '{name}' has unsupported dtype {t.dtype}") from None
            out[name] = TensorInfo(name, tuple(t.shape), dtype, f)
        return out

    def _torch_state(self, f: Path) -> dict:
        if f not in self._torch_cache:
            sd = _torch_load(f)
            if not isinstance(sd, dict):
                raise CheckpointError(f"{f}: expected a state dict (name -> tensor), got {type(sd).__name__}")
            if "state_dict" in sd and isinstance(sd["state_dict"], dict):
                sd = sd["state_dict"]
            self._torch_cache[f] = sd
        return self._torch_cache[f]

    def _merge(self, files: Iterable[Path], per_file) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        for f in files:
            for name, info in per_file(f).items():
                if name in infos:
                    raise CheckpointError(
                        f"tensor '{name}' appears in two shards: {infos[name].file.name} and {f.name}",
                        "the shards come from different checkpoints or were saved twice; keep one copy",
                    )
                infos[name] = info
        return infos

    def _scan_indexed(self, index_path: Path, per_file):
        index = _read_json(index_path, index_path.name)
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise CheckpointError(f"{index_path}: has no 'weight_map'", "re-save the checkpoint to rebuild its index")
        for name, fname in wmap.items():
            # a shard is a plain file name beside the index (never a path that leaves the directory)
            if not isinstance(fname, str) or not fname or fname in (".", "..") or "/" in fname or "\\" in fname:
                raise CheckpointError(
                    f"{index_path}: 'weight_map' maps tensor '{name}' to {fname!r}, expected the file name "
                    "of a shard in this directory",
                    "re-save the checkpoint to rebuild its index")
        files = []
        for fname in dict.fromkeys(wmap.values()):
            f = self.path / fname
            if not f.exists():
                users = [k for k, v in wmap.items() if v == fname]
                raise CheckpointError(
                    f"{index_path.name} names shard '{fname}' (for {len(users)} tensors, e.g. '{users[0]}') "
                    f"but {f} does not exist",
                    "download the missing shard, or fix the index",
                )
            files.append(f)
        infos = self._merge(files, per_file)
        for name, fname in wmap.items():
            info = infos.get(name)
            if info is None:
                raise CheckpointError(
                    f"{index_path.name} maps tensor '{name}' to '{fname}', which does not contain it",
                    "the index and the shards disagree: re-download the shard or rebuild the index",
                )
            if info.file.name != fname:
                raise CheckpointError(
                    f"{index_path.name} maps tensor '{name}' to '{fname}' but it is in '{info.file.name}'",
                    "rebuild the index from the shards",
                )
        # tensors in shards but not in the index are still listed (as transformers loads them)
        return files, infos

    def _scan_meta(self, files: list[Path]) -> dict[str, TensorInfo]:
        parts: dict[str, list[TensorInfo]] = {}
        for f in files:
            for name, info in self._bin_file_infos(f).items():
                parts.setdefault(name, []).append(info)
        infos = {}
        for name, ps in parts.items():
            if len(ps) != len(files):
                raise CheckpointError(f"Meta shard set is inconsistent: '{name}' is in {len(ps)} of {len(files)} shards")
            dim = self._meta_dim(name, ps)
            shape = list(ps[0].shape)
            if dim is not None:
                shape[dim] = sum(p.shape[dim] for p in ps)
            infos[name] = TensorInfo(name, tuple(shape), ps[0].dtype, ps[0].file)
            self._meta_parts[name] = ps
        return infos

    @staticmethod
    def _meta_dim(name: str, parts: list[TensorInfo]) -> int | None:
        if len(parts) == 1 or len(parts[0].shape) < 2:
            return None
        for pat, dim in _META_CONCAT_DIM:
            if pat.search(name):
                return dim
        return None

    # ---- public API (infos / names / in / len: TensorIndex) --------------------------------
    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor '{name}' is not in the checkpoint") from None

    def get(self, name: str) -> np.ndarray:
        """Materialize one tensor as a numpy array."""
        info = self.info(name)
        if self.layout == "safetensors":
            return read_tensor(info)
        if self.layout == "bin":
            return _torch_to_numpy(self._torch_state(info.file)[name])
        parts = self._meta_parts[name]
        arrays = [_torch_to_numpy(self._torch_state(p.file)[name]) for p in parts]
        dim = self._meta_dim(name, parts)
        return arrays[0] if dim is None else np.concatenate(arrays, axis=dim)

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (name, array) one at a time, in file order unless `names` is given."""
        for name in (self._infos if names is None else names):
            yield name, self.get(name)

    def shard_summary(self) -> list[tuple[Path, int, int]]:
        """(file, tensors, bytes) per data file, from headers only."""
        out: dict[Path, list[int]] = {f: [0, 0] for f in self.shards}
        for name, info in self._infos.items():
            for part in self._meta_parts.get(name, [info]):
                slot = out.setdefault(part.file, [0, 0])
                slot[0] += 1
                slot[1] += part.nbytes
        return [(f, n, b) for f, (n, b) in out.items()]

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())


def open_checkpoint(path, require_config: bool = True, read_config: bool = True) -> CheckpointReader:
    """Open a model directory (see `CheckpointReader`), or a llama.cpp `.gguf` file (a
    `gguf_io.GGUFCheckpoint`: HF names and config, tensors dequantized one at a time)."""
    if Path(path).suffix.lower() == ".gguf" and Path(path).is_file():
        from .gguf_io import GGUFCheckpoint

        return GGUFCheckpoint(path, require_config=require_config, read_config=read_config)
    return CheckpointReader(path, require_config=require_config, read_config=read_config)
