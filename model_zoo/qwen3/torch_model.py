"""The Qwen family's torch golden (`model_zoo/qwen/torch_model.py`)."""

from ..qwen.torch_model import calib_imports, calib_stages, load_reference  # noqa: F401
