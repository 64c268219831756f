"""Weights HF ↔ MindSpore, streamed (one tensor in memory), and MindIR export.

- `port_to_mindspore(hf_dir, out, naming="ours"|"mindformers", fmt="ckpt"|"safetensors", dtype=None)`;
  `quantize="w8a16"|"w8a8"` writes int8 Linears + scales (docs/mindspore.md, "Quantized ports")
- `port_to_hf(port_dir, out)`
- `open_weights(dir)`: an HF / Meta checkpoint or a port output, as a canonical stream
- `export_mindir(model_dir, out, seq_len=…)` (in `ascend_adapt.port.mindir`, imports mindspore)

Nothing here imports mindspore or torch at module level.
"""

from .artifact import MANIFEST_NAME, NAMINGS, FORMATS, open_weights, read_manifest
from .convert import convert, port_to_hf, port_to_mindspore

__all__ = ["port_to_mindspore", "port_to_hf", "convert", "open_weights", "read_manifest",
           "MANIFEST_NAME", "NAMINGS", "FORMATS"]
