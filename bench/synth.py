"""Synthetic full-size checkpoints with real key names and shapes, for benchmarks.

The key inventories in merge_core/architectures/keysets/ list every tensor of a full SD1.5 or SDXL
checkpoint (checkpoint naming). Values are seeded pseudo-random fp16: each
tensor is a slice of one random pool at a seed-dependent offset, which is fast
to generate and different between seeds. Never committed: made at bench time.
"""
from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

POOL = 1 << 25  # 32 Mi values


def keyset(name: str) -> dict[str, tuple[int, ...]]:
    with gzip.open(HERE.parent / "merge_core" / "architectures" / "keysets" / f"{name}.json.gz") as f:
        return {k: tuple(v[0]) for k, v in json.loads(f.read()).items()}


def write_synthetic(name: str, path: Path, seed: int, dtype=torch.float16) -> Path:
    # imported here: bench_busy's LoRA child imports keyset with an older merge_core first on the path
    from merge_core.io.safetensors_file import SafetensorsWriter
    shapes = keyset(name)
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(POOL, generator=gen) * 0.05).to(dtype)
    writer = SafetensorsWriter(path, [(k, dtype, s) for k, s in shapes.items()], {"synthetic": name},
                               overwrite=True)
    for i, (key, shape) in enumerate(shapes.items()):
        n = math.prod(shape)
        start = (seed * 7919 + i * 104729) % POOL
        flat = torch.cat([pool[start:], pool[:start]])[:n] if n > POOL - start else pool[start:start + n]
        if n > POOL:
            flat = pool.repeat(math.ceil(n / POOL))[:n]
        writer.write(key, flat.reshape(shape))
    return writer.commit()


if __name__ == "__main__":
    arch, out, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    write_synthetic(arch, out, seed)
    print(out, out.stat().st_size / 1e9, "GB")
