#!/usr/bin/env bash
# Set up (or reuse) the environment and run the main job on built-in tiny models:
# HF checkpoint -> convert -> simulate -> generate, with parity against the fp32 golden printed.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
python tools/demo.py "$@"
