"""NVIDIA Cosmos families: Cosmos 7B/14B, Cosmos-Predict2 2B/14B, and Anima (Cosmos-Predict2 with an
LLM adapter).

Declared as the families of transformers.py are (see its docstring for what every family shares).
"""
from __future__ import annotations

DECLARED: tuple = ()
