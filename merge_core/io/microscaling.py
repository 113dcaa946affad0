"""ComfyUI 0.33's block-scaled weight formats, mxfp8 and nvfp4: dequantised and quantised in pure torch.

Why here: a file merge reads these layers as float32 and writes "as A" in A's own format, and the
values must be what ComfyUI 0.33 itself computes (its comfy_kitchen package, CPU/eager backend),
bit for bit, without importing ComfyUI. The arithmetic below follows that definition step by step
(the same operations in the same order, hence the same roundings):

- ``mxfp8``: fp8 e4m3fn values, one power-of-two scale (e8m0: an exponent byte, value 2^(b-127);
  byte 0 reads as 0, as comfy_kitchen reads it) per 32 consecutive values of a row. Both dimensions
  are padded with zeros to multiples of 32 when quantised, so the stored weight is the padded shape;
- ``nvfp4``: e2m1 values (0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives), two per byte, the first
  of each pair in the high nibble; one fp8 e4m3fn scale per 16 values (``weight_scale``) times a
  float32 scale for the tensor (``weight_scale_2``); padded to multiples of 16, so the stored weight
  is (rows, cols / 2) of the padded shape.

The block scales are stored in cuBLAS's tiled order ("blocked"): the (rows, blocks) scale matrix,
padded with zeros to multiples of (128, 4), is cut into 128x4 tiles, stored tile after tile (row of
tiles first); inside a tile, row ``r`` and column ``c`` go to byte ``(r % 32) * 16 + (r // 32) * 4 + c``.

One deliberate difference: a tensor that is zero throughout makes 0.33's nvfp4 quantisation divide
0 by 0 (NaN scales, garbage values); it is written here as zeros with zero scales, which dequantise
to the zeros they are.
"""
from __future__ import annotations

import torch

MXFP8, NVFP4 = "mxfp8", "nvfp4"
BLOCK = {MXFP8: 32, NVFP4: 16}  # values per block scale, and the padding multiple of both dimensions
E4M3_MAX, E2M1_MAX = 448.0, 6.0
E8M0_BIAS = 127
E8M0_MIN = 2.0 ** -127  # the smallest block scale mxfp8 quantisation asks for
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
# e2m1 rounding to nearest, ties to the even code: (threshold, whether a value equal to it rounds up)
E2M1_STEPS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))
TILE_ROWS, TILE_COLS = 128, 4


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) a 2-D weight of this shape is stored as, in values (nvfp4 stores half the bytes)."""
    rows, cols = shape
    return _round_up(rows, BLOCK[fmt]), _round_up(cols, BLOCK[fmt])


def storage_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = padded_shape(fmt, shape)
    return (rows, cols // 2) if fmt == NVFP4 else (rows, cols)


def scale_shape(fmt: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The stored (tiled) block-scale shape of a weight of this (logical or padded) shape."""
    rows, cols = padded_shape(fmt, shape)
    return _round_up(rows, TILE_ROWS), _round_up(cols // BLOCK[fmt], TILE_COLS)


def values_shape(fmt: str, stored: tuple[int, ...]) -> tuple[int, int]:
    """The (padded) shape of the values a stored weight holds."""
    rows, cols = stored
    return (rows, cols * 2) if fmt == NVFP4 else (rows, cols)


def to_tiled(scales: torch.Tensor) -> torch.Tensor:
    """A (rows, blocks) scale matrix in the tiled order (see the module docstring), zero-padded."""
    rows, cols = scales.shape
    tr, tc = _round_up(rows, TILE_ROWS) // TILE_ROWS, _round_up(cols, TILE_COLS) // TILE_COLS
    full = scales.new_zeros((tr * TILE_ROWS, tc * TILE_COLS))
    full[:rows, :cols] = scales
    return full.reshape(tr, 4, 32, tc, 4).permute(0, 3, 2, 1, 4).reshape(tr * TILE_ROWS, tc * TILE_COLS)


def from_tiled(tiled: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols) scale matrix that ``to_tiled`` stored."""
    tr, tc = _round_up(rows, TILE_ROWS) // TILE_ROWS, _round_up(cols, TILE_COLS) // TILE_COLS
    return tiled.reshape(tr, tc, 32, 4, 4).permute(0, 3, 2, 1, 4).reshape(tr * TILE_ROWS, tc * TILE_COLS)[
        :rows, :cols]


def _e8m0_value(exponents: torch.Tensor) -> torch.Tensor:
    """e8m0 bytes as float32 powers of two (byte 0 as 0, byte 255 as inf, as comfy_kitchen reads them)."""
    bits = exponents.to(torch.int32) << 23
    return torch.where(exponents == 0, torch.zeros_like(bits), bits).view(torch.float32)


def _pad(x: torch.Tensor, fmt: str) -> torch.Tensor:
    rows, cols = padded_shape(fmt, tuple(x.shape))
    if (rows, cols) == tuple(x.shape):
        return x
    return torch.nn.functional.pad(x, (0, cols - x.shape[1], 0, rows - x.shape[0]))


def dequantize_mxfp8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 (padded shape) of an mxfp8 weight: fp8 values times their block's power of two."""
    from .fp8 import widen
    rows, cols = values.shape
    blocks = cols // BLOCK[MXFP8]
    exponents = from_tiled(scales.view(torch.uint8), rows, blocks)
    out = widen(values).reshape(rows, blocks, BLOCK[MXFP8])
    return out.mul_(_e8m0_value(exponents).unsqueeze(-1)).reshape(rows, cols)


def quantize_mxfp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3fn values of the padded shape, tiled e8m0 block scales) of a 2-D tensor."""
    x = _pad(x, MXFP8)
    rows, cols = x.shape
    blocks = x.reshape(rows, cols // BLOCK[MXFP8], BLOCK[MXFP8])
    amax = torch.amax(torch.abs(blocks), dim=-1)
    wanted = torch.clamp(amax.float() / E4M3_MAX, min=E8M0_MIN)
    exponents = torch.clamp(torch.ceil(torch.log2(wanted)).to(torch.int32) + E8M0_BIAS, 0, 254).to(torch.uint8)
    zero = amax == 0
    scale = torch.where(zero, torch.ones_like(wanted), _e8m0_value(exponents))
    scaled = torch.where(zero.unsqueeze(-1), 0.0, blocks.float() / scale.unsqueeze(-1))
    values = torch.clamp(scaled, -E4M3_MAX, E4M3_MAX).reshape(rows, cols).to(torch.float8_e4m3fn)
    exponents = torch.where(zero, torch.zeros_like(exponents), exponents)
    return values, to_tiled(exponents).view(torch.float8_e8m0fnu)


def dequantize_nvfp4(packed: torch.Tensor, scales: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    """float32 (padded shape) of an nvfp4 weight: e2m1 values times (tensor scale x block scale)."""
    rows = packed.shape[0]
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(rows, -1)
    values = E2M1_VALUES[codes.long()]
    cols = values.shape[1]
    blocks = cols // BLOCK[NVFP4]
    block_scales = from_tiled(scales.view(torch.float8_e4m3fn), rows, blocks)
    total = tensor_scale.float() * block_scales.float()
    return (values.reshape(rows, blocks, BLOCK[NVFP4]) * total.unsqueeze(-1)).reshape(rows, cols)


def nvfp4_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """The tensor scale 0.33 computes when none is given: the largest magnitude over (448 x 6)."""
    return (torch.amax(x.abs()) / (E4M3_MAX * E2M1_MAX)).to(torch.float32)


def _e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit e2m1 codes of float32 values already within +-6: nearest value, ties to the even code."""
    mag = x.abs()
    code = torch.zeros(x.shape, dtype=torch.uint8)
    for threshold, tie_up in E2M1_STEPS:
        code += (mag >= threshold if tie_up else mag > threshold).to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def quantize_nvfp4(x: torch.Tensor, tensor_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed e2m1 bytes of the padded shape, tiled e4m3fn block scales) of a 2-D tensor."""
    x = _pad(x, NVFP4)
    rows, cols = x.shape
    blocks = x.reshape(rows, cols // BLOCK[NVFP4], BLOCK[NVFP4])
    if not bool(tensor_scale):  # zero throughout (see the module docstring)
        return (torch.zeros((rows, cols // 2), dtype=torch.uint8),
                to_tiled(torch.zeros(blocks.shape[:2], dtype=torch.float8_e4m3fn)))
    wanted = torch.amax(torch.abs(blocks), dim=-1).to(torch.float32) / E2M1_MAX
    block_scales = torch.clamp(wanted / tensor_scale, max=E4M3_MAX)
    stored = block_scales.to(torch.float8_e4m3fn)
    total = tensor_scale * stored.float()
    zero = total == 0
    scaled = blocks.float() / torch.where(zero, torch.ones_like(total), total).unsqueeze(-1)
    scaled = torch.where(zero.unsqueeze(-1), torch.zeros_like(scaled), scaled)
    codes = _e2m1_codes(torch.clamp(scaled, -E2M1_MAX, E2M1_MAX).reshape(rows, cols))
    pairs = codes.reshape(rows, cols // 2, 2)
    return (pairs[..., 0] << 4) | pairs[..., 1], to_tiled(stored)
