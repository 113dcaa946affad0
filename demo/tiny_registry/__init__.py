"""Test/demo-only custom node: lets ComfyUI load the tiny demo checkpoints.

It registers the tiny SD1/SD2/SDXL and transformer-family model configs at import time and defines no nodes.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
import tiny_families  # noqa: E402
import tiny_models  # noqa: E402

tiny_models.register()
tiny_families.register()
NODE_CLASS_MAPPINGS = {}
