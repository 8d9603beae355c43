"""What this process holds in memory, for steps that size their work to the job's ``mem_mb``."""

from __future__ import annotations

import os
import sys


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; elsewhere its peak so far), in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


#: glibc's ``mallopt`` parameter number of ``M_MMAP_THRESHOLD``
_M_MMAP_THRESHOLD = -3


def return_large_frees(threshold_bytes: int = 1 << 20) -> bool:
    """Have glibc serve every allocation of at least ``threshold_bytes`` by its own mmap, process-wide.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so a loop
    that reads, converts and drops blocks of tens of MB leaves them in the heap, where fragmentation
    keeps them resident: a streamed step's RSS then creeps above what it holds. A fixed threshold
    returns each such block to the system as it is freed. For steps that bound their memory by
    streaming (the out-of-core semi-NMF); False where the C library is not glibc (nothing changes).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
