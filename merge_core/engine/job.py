"""What the key handlers of one merge share, and what each hands the writer.

The engine's loop (stream.py) gives every key to the handler of its action: copied.py (kept from A or
taken from B), linear.py (a merge mode's formula), calc.py (a calc mode), nmodel.py (n-model combine).
A handler names the sources it reads, loads a key's inputs on the read-ahead thread, and computes the key
on the merge thread into a ``Put`` for the write-behind thread.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Protocol, Union

import torch

from ..device import Transfer
from ..io.buffers import BufferPool
from ..io.key_source import KeySource
from ..io.sinks import Sink
from ..methods.adjust import apply_adjust
from ..nonfinite import check_result
from ..plan import Action, KeyPlan, MergePlan


class Put(NamedTuple):
    """One key for the sink: ``write(key, data)`` (its put or put_raw), and pooled memory that goes back to
    the pool once written (a result computed into pooled memory, or a pooled buffer of stored bytes)."""
    write: Callable
    key: str
    data: Union[torch.Tensor, bytes, bytearray, memoryview]  # a tensor, or stored bytes
    release: Optional[torch.Tensor] = None

    @property
    def nbytes(self) -> int:
        data = self.data
        return data.numel() * data.element_size() if isinstance(data, torch.Tensor) else memoryview(data).nbytes


class KeyHandler(Protocol):
    def reads(self, kp: KeyPlan) -> tuple[str, ...]:
        """The sources this key's work reads (the read-ahead's byte budget and its read hints)."""

    def load(self, kp: KeyPlan):
        """On the read-ahead thread: this key's inputs, read (and checked where that overlaps the math)."""

    def compute(self, kp: KeyPlan, loaded) -> Put:
        """On the merge thread: this key's output from what ``load`` returned."""


def source_of(kp: KeyPlan) -> str:
    """The source a kept or copied key comes from."""
    return "b" if kp.action is Action.FROM_B else "a"


@dataclass
class MergeJob:
    """One run_merge call: its plan, sources and sink, and what its keys share."""
    plan: MergePlan
    sources: Mapping[str, KeySource]
    sink: Sink
    pool: BufferPool  # read buffers and reusable results (io/buffers.py)
    move: Transfer  # to the math device and back (device.py)
    layout: list[tuple[str, torch.dtype, tuple[int, ...]]]  # the output's (key, dtype, shape), in write order
    halves: cf.Executor  # takes the second half of a large key (linear.split_work)
    dtypes: dict[str, torch.dtype] = field(init=False)
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.dtypes = {k: d for k, d, _ in self.layout}
        self.shapes = {k: shape for k, _, shape in self.layout}

    def note_nonfinite(self, key: str, counts: Optional[dict]) -> None:
        if counts:
            self.plan.nonfinite[key] = counts

    def note_fallback(self, key: str, notes: list) -> None:
        if notes:
            self.plan.fallbacks[key] = notes[0]

    def give_back(self, inputs: Iterable[tuple[str, Optional[torch.Tensor]]], result: torch.Tensor) -> None:
        """A merged key's input buffers go back to the pool for the next reads, once its result exists:
        (source name, tensor) pairs, of which only those read through the pool (a FileSource's fresh
        buffer, this key's alone) are taken; never a caller's own tensor (a DictSource's)."""
        for name, tensor in inputs:
            if tensor is not None and self.sources[name].buffers is self.pool:
                self.pool.give(tensor, result)

    def let_go(self, key: str, inputs: Iterable[tuple[str, Optional[torch.Tensor]]]) -> Callable[[int, int], None]:
        """A callback for the math to call with each span [lo, hi) of values it has merged: the sources let
        those values' stored bytes go (a mapped file's pages: the key's inputs shrink while its result grows;
        the rest of the key goes at its ``release``). (source name, tensor as the math reads it) pairs."""
        parts = [(self.sources[name], tensor.element_size()) for name, tensor in inputs if tensor is not None]

        def release(lo: int, hi: int) -> None:
            for source, size in parts:
                source.release(key, (lo * size, hi * size))
        return release

    def merged_put(self, kp: KeyPlan, inputs: tuple, result: torch.Tensor,
                   release: Optional[torch.Tensor] = None) -> Put:
        """A two- or three-model key's result on the host (its inputs A, B, C given back), Adjust applied."""
        result = self.move.output(result)  # Adjust touches a few small keys: on the host
        self.give_back(zip("abc", inputs), result)
        if kp.adjust is not None:
            result = apply_adjust(result, kp.adjust)
            check_result(result, kp.key, "adjust", not self.plan.nonfinite.get(kp.key), "adjust", result.dtype)
        return Put(self.sink.put, kp.key, result, release)
