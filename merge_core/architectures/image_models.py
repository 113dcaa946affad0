"""Image transformer families: Krea 2, LongCat-Image and AuraFlow.

Declared as the families of transformers.py are (see its docstring for what every family shares).
"""
from __future__ import annotations

DECLARED: tuple = ()
