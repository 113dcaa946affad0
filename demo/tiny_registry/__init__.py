"""Test/demo-only custom node: lets ComfyUI load the tiny demo checkpoints.

It registers tiny SD1/SDXL model configs at import time and defines no nodes.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
import tiny_models  # noqa: E402

tiny_models.register()
NODE_CLASS_MAPPINGS = {}
