"""The short names of stored dtypes ("fp16", "fp8_e4m3fn", ...): what reports show and "output as in A" writes."""
from __future__ import annotations

import torch

DTYPE_FORMATS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_FORMATS.get(dtype, str(dtype).replace("torch.", ""))
