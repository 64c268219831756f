"""qwen2: the Qwen family's qwen2 variant. The code lives in `model_zoo/qwen/`; this package is the
name the backends look up (`model_zoo.<spec.arch>.torch_model` / `.ms_model`)."""

from ..qwen import adapter  # noqa: F401  (registration side effect)
