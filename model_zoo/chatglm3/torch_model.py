"""ChatGLM3-6B's torch reference is ChatGLM2's (`model_zoo/chatglm2/torch_model.py`); the spec
carries the differences (rotary table precision, `extra["glm_version"]`)."""

from ascend_adapt.model_zoo.chatglm2.torch_model import calib_stages, load_reference

__all__ = ["calib_stages", "load_reference"]
