"""ChatGLM3-6B's MindSpore cell is ChatGLM2's (`model_zoo/chatglm2/ms_model.py`); the spec
carries the differences."""

from ascend_adapt.model_zoo.chatglm2.ms_model import build

__all__ = ["build"]
