"""ChatGLM-6B (v1) family: THUDM/chatglm-6b's remote-code model, reimplemented."""

from .adapter import ChatGLMAdapter

__all__ = ["ChatGLMAdapter"]
