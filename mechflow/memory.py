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
