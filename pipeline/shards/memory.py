"""How much memory a population member takes on its device, and how many members fit there.

A member's memory is counted, not guessed: one member's eager shard runs under PeakMemory, which
sees every tensor the shard's operations create (below vmap and torch.func's transforms, where
the real storages are) and when it is freed, and keeps the largest total alive at once; to that
come the member's parameters and Adam moments. Stacked members repeat it, so a call of M members
needs about M times as much. What the allocator or a library keeps beside the tensors (a conv's
workspace, fragmentation) is not counted: hence only USABLE of the free memory is planned for."""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

USABLE = 0.8  # of the device's free memory, for the counted tensors; the rest for the allocator and workspaces


class PeakMemory(TorchDispatchMode):
    """The peak bytes of tensor storages alive at once, among those created inside the mode (a
    storage counts once however many views hold it, until the last is gone)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self._holders = 0, 0, {}

    def _release(self, key: int, nbytes: int) -> None:
        self._holders[key] -= 1
        if not self._holders[key]:
            del self._holders[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.is_meta:
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if not key:
                continue
            if key not in self._holders:
                self._holders[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._holders[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def member_bytes(shard_fn, params: dict, batch: dict) -> int:
    """Bytes one member needs: the peak of its shard's tensors (PeakMemory) plus its parameters and
    two Adam moments. params / batch: one member's rows (leading dimension 1); shard_fn eager."""
    with PeakMemory() as counter:
        shard_fn(params, batch)
    return counter.peak + 3 * sum(v.numel() * v.element_size() for v in params.values())


def available_bytes(device) -> int:
    """Memory free for tensors on `device`: on CUDA what the driver reports free plus what torch's
    allocator holds unused; on a CPU the memory the OS can give without swapping."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available


def members_that_fit(per_member: int, device) -> int:
    return int(USABLE * available_bytes(device) // max(per_member, 1))
