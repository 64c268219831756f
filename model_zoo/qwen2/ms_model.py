"""The Qwen family's MindSpore cell (`model_zoo/qwen/ms_model.py`)."""

from ..qwen.ms_model import build  # noqa: F401
