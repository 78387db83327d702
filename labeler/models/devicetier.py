"""Hidden states kept on the model's device, and pinned-memory staging for the rest.

Re-scoring cached images against new prompts runs only the Q-Former (a few
percent of the vision tower's compute); what it costs beyond that is moving
727 KB of hidden states per image from disk to the GPU. :class:`DeviceTier`
keeps the hidden states of recently embedded images (in practice the images of
the project being annotated) on the device, within a byte budget, least
recently used first out, so re-scoring them touches neither disk nor host
memory. Rows that are not there are gathered into one page-locked (pinned)
host buffer and sent with one asynchronous copy (:func:`stage`), instead of
one pageable copy per image.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch

Row: TypeAlias = "torch.Tensor | np.ndarray"


class DeviceTier:
    """An LRU map content key -> (hidden (L, D), pooled (D,)) tensors on ``device``, at most ``max_bytes``."""

    def __init__(self, device: torch.device | str, max_bytes: int) -> None:
        self.device = torch.device(device)
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._rows: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    @staticmethod
    def _size(hidden: torch.Tensor, pooled: torch.Tensor) -> int:
        return hidden.numel() * hidden.element_size() + pooled.numel() * pooled.element_size()

    def put(self, keys: Sequence[str], hidden: torch.Tensor | Sequence[Row],
            pooled: torch.Tensor | Sequence[Row]) -> None:
        """Keep ``hidden[i]``, ``pooled[i]`` under ``keys[i]`` (copied to the device where they are not).

        Each row is its own allocation (a view would pin the whole batch), so
        the byte count is exact and eviction frees what it counts.
        """
        if self.max_bytes <= 0:
            return
        hidden = stage(hidden, self.device)
        pooled = stage(pooled, self.device)
        rows = [(k, hidden[i].clone(), pooled[i].clone()) for i, k in enumerate(keys)]
        with self._lock:
            for k, h, p in rows:
                old = self._rows.pop(k, None)
                if old is not None:
                    self.nbytes -= self._size(*old)
                self._rows[k] = (h, p)
                self.nbytes += self._size(h, p)
            while self.nbytes > self.max_bytes and self._rows:
                _, old = self._rows.popitem(last=False)
                self.nbytes -= self._size(*old)

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            hit = self._rows.get(key)
            if hit is not None:
                self._rows.move_to_end(key)
            return hit

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.nbytes = 0


def stage(rows: torch.Tensor | Sequence[Row], device: torch.device, dtype: torch.dtype | None = None
          ) -> torch.Tensor:
    """``rows`` (a tensor, or per-image device tensors, host arrays or memory maps) as one tensor on ``device``.

    Rows already on ``device`` stay there; the others are copied into one
    pinned host buffer (on CUDA) and sent with one non-blocking copy. The
    result has ``dtype`` (default: the rows' own).
    """
    device = torch.device(device)
    if isinstance(rows, torch.Tensor):
        return rows.to(device, dtype or rows.dtype, non_blocking=True)
    if not len(rows):
        raise ValueError("no rows to stage")
    out: list[torch.Tensor | None] = [r if isinstance(r, torch.Tensor) and r.device == device else None for r in rows]
    host = [i for i, o in enumerate(out) if o is None]
    if host:
        first = _host_array(rows[host[0]])
        buf = torch.empty((len(host), *first.shape), dtype=torch.from_numpy(np.empty(0, first.dtype)).dtype,
                          pin_memory=device.type == "cuda")
        view = buf.numpy()
        for j, i in enumerate(host):  # reading a memory map here is the disk read
            view[j] = _host_array(rows[i])
        sent = buf.to(device, non_blocking=True)
        for j, i in enumerate(host):
            out[i] = sent[j]
    staged = [o for o in out if o is not None]  # every row is on the device now
    dtype = dtype or staged[0].dtype
    return torch.stack([o.to(dtype) for o in staged])


def _host_array(row: Row) -> np.ndarray:
    """``row`` as a host array (a tensor copied to the host; an array or memory map as it is)."""
    if isinstance(row, torch.Tensor):
        return row.detach().cpu().numpy()
    return np.asarray(row)
