"""glibc malloc settings for processes that allocate and free many megabytes per request.

Decoded pixels, masks and large messages are allocated and freed on every request.
With glibc's defaults, in a process with threads, freed blocks of that size go back to
the kernel, and the next request faults the same memory in again page by page. That was
measured in the inference service: about 2,600 minor page faults per 1 MP cut-out, and
its guided filter took 30 % more CPU than the same call in a single-threaded process,
which faulted almost never. With blocks up to 32 MiB served from the heap and the heap
trimmed only past 64 MiB free at its top, it faults about 50 times per image and runs
as fast. Peaks are unchanged; after a burst a process keeps up to that much memory
free for the next one instead of returning it. The record: docs/decisions/malloc.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

MIB = 2**20
# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 * MIB, trim_threshold: int = 64 * MIB) -> bool:
    """Applies the settings above; False (and nothing changed) where libc has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:
        return False
    applied = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    if not applied:
        log.warning("malloc settings not applied; large buffers will be faulted in on every request")
    return applied
