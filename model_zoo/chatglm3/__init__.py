"""ChatGLM3-6B: implemented with ChatGLM2-6B in `model_zoo/chatglm2/` (one family, the
differences as data). This package only lets the backends find it by `spec.arch`."""
