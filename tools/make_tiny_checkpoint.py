#!/usr/bin/env python
"""Write tiny random checkpoints (Llama-2 / ChatGLM-6B) in the real on-disk layouts.

Usage: python tools/make_tiny_checkpoint.py OUT_DIR [--arch llama|chatglm] [--layout ...] [--force]
Same as `ascend-adapt make-tiny`; the library function is
`ascend_adapt.model_zoo.tiny.make_tiny_checkpoint`.
"""

import sys

from ascend_adapt.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["make-tiny", *sys.argv[1:]]))
