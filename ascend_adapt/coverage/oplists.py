"""The kernel lists of torch_npu / torch_mlu releases (data files under `coverage/data/`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ascend_adapt.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
# package -> (data file, device type string, SDK label)
PACKAGES = {"torch_npu": ("torch_npu_ops.json", "npu", "cann"),
            "torch_mlu": ("torch_mlu_ops.json", "mlu", "neuware")}


@dataclasses.dataclass(frozen=True)
class Release:
    """One release of torch_npu or torch_mlu.

    Attributes:
        package: "torch_npu" or "torch_mlu".
        version: the package version ("2.6.0.post5", "1.22.0+torch2.4.0").
        torch: the PyTorch version it pairs with.
        sdk: the CANN / CTR (Neuware) version it needs ("CANN 8.5.0").
        kernels: ATen overload names with a device kernel ("mm", "add.Tensor").
        to_cpu / unsupported: overloads the release's own lists send to the CPU / reject.
        sources: where the lists come from (repository, branch, commit, date, file).
        fallback: what the package does with an op that has no kernel.
    """

    package: str
    version: str
    torch: str
    sdk: str
    kernels: frozenset
    to_cpu: frozenset
    unsupported: frozenset
    sources: tuple
    fallback: str

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}"


def load_releases(package: str = "torch_npu", path: str | Path | None = None) -> list[Release]:
    """The releases in the package's data file (or `path`), oldest first.

    Raises:
        ConfigError: unknown package, or a data file that is missing keys.
    """
    if package not in PACKAGES:
        raise ConfigError(f"no op lists for package '{package}'", f"use one of: {', '.join(PACKAGES)}")
    file = Path(path) if path else DATA_DIR / PACKAGES[package][0]
    try:
        data = json.loads(file.read_text())
        sdk_key = PACKAGES[package][2]
        return [Release(package, r[package], r["torch"], r[sdk_key], frozenset(r["kernels"]),
                        frozenset(r.get("to_cpu", ())), frozenset(r.get("unsupported", ())),
                        tuple(r["sources"]), data["fallback"]) for r in data["releases"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"op-list data file '{file}' is unreadable or incomplete: {exc}",
                          "rebuild it with tools/build_op_coverage_data.py") from None
