"""Keys kept from A or taken from B: copied as stored bytes when the output keeps their dtype, else cast."""
from __future__ import annotations

import torch

from ..plan import KeyPlan
from .job import MergeJob, Put, source_of


class CopyKey:
    def __init__(self, job: MergeJob):
        self.job = job

    def reads(self, kp: KeyPlan) -> tuple[str, ...]:
        return (source_of(kp),)

    def load(self, kp: KeyPlan):
        """The stored bytes where the source has them and the dtype stays; else the tensor."""
        source = self.job.sources[source_of(kp)]
        if self.job.dtypes[kp.key] == source.dtype(kp.key):
            raw = source.raw(kp.key)
            if raw is not None:
                return raw
        return source.get(kp.key)

    def compute(self, kp: KeyPlan, loaded) -> Put:
        job = self.job
        if isinstance(loaded, torch.Tensor):
            return Put(job.sink.put, kp.key, loaded.to(job.dtypes[kp.key]))
        pooled = job.sources[source_of(kp)].buffers is job.pool and len(loaded)
        return Put(job.sink.put_raw, kp.key, loaded, torch.frombuffer(loaded, dtype=torch.uint8) if pooled else None)
