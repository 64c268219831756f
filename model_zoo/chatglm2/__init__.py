"""ChatGLM2-6B / ChatGLM3-6B family: THUDM's remote-code models, reimplemented (one family,
the version differences as data: see `adapter.py`)."""

from .adapter import ChatGLM2Adapter, ChatGLM3Adapter

__all__ = ["ChatGLM2Adapter", "ChatGLM3Adapter"]
