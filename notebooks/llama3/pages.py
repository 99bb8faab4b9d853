"""Running fast on a CPU (the appendix on the fast path): the weights' pages mapped up front, if they fit
in this process's memory. The bf16 matmul kernel is kernel.py, called by weights.linear."""

from __future__ import annotations

import ctypes
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .config import progress_bar
from .weights import stored_tensors

MADV_POPULATE_READ = 22  # Linux 5.14+: map these pages now, reading them from disk if needed
POPULATE_PIECE = 64 << 20


def memory_limit() -> int:
    """Bytes of RAM this process can have: the machine's, or its cgroup's limit if lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return limit
    for line in lines:  # "0::/path" for cgroup v2, "N:memory:/path" for v1
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            limit_file = Path("/sys/fs/cgroup", rel.lstrip("/"), "memory.max")
        elif "memory" in controllers.split(","):
            limit_file = Path("/sys/fs/cgroup/memory", rel.lstrip("/"), "memory.limit_in_bytes")
        else:
            continue
        try:
            value = limit_file.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit


def map_weights(weights: dict[str, torch.Tensor], progress: bool = True) -> bool:
    """Map every page of the memory-mapped weights into this process now, if they fit in RAM.

    Without this the forward pass stops on a page fault for every 64 KB of weights it first
    touches, even when the file is in the page cache. Mapping them up front is one pass over
    the file, on all cores, and reads it from disk once if it is not cached. It then reads one
    byte of each page: right after the file has been read, the first touch of each mapped page
    still costs something (the README's benchmark section has the numbers at 8B).
    When the file does not fit (a small machine, a cgroup limit) nothing is done: the forward
    pass then streams the weights from disk layer by layer. Returns whether it mapped them.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    pieces, seen = [], set()  # (bytes of one storage, offset, length)
    tensors = [t for w in weights.values() for t in stored_tensors(w)]
    for t in tensors:
        storage = t.untyped_storage()
        if storage.device.type != "cpu" or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        as_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
        pieces += [
            (as_bytes, o, min(POPULATE_PIECE, storage.nbytes() - o)) for o in range(0, storage.nbytes(), POPULATE_PIECE)
        ]
    total = sum(n for _, _, n in pieces)
    if not sys.platform.startswith("linux") or total > 0.75 * memory_limit():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def populate(piece):  # ctypes and torch release the GIL, so the threads run side by side
        as_bytes, offset, length = piece
        address = as_bytes.data_ptr() + offset
        aligned = address & ~(page - 1)
        if libc.madvise(aligned, address + length - aligned, MADV_POPULATE_READ) != 0:
            return False  # kernels older than 5.14: pages then map on first use
        as_bytes[offset : offset + length : page].max()  # one byte per page
        return True

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        done = pool.map(populate, pieces)
        if progress and total >= 1 << 30:
            done = progress_bar(done, total=len(pieces), desc="mapping weights")
        return all(list(done))
