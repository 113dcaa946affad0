"""Video transformer families: LTXV, LTX-2 (audio-video), Mochi, HunyuanVideo (and HunyuanImage 2.1, the same
class) and Kandinsky 5.

Declared as the families of transformers.py are (see its docstring for what every family shares).
"""
from __future__ import annotations

DECLARED: tuple = ()
