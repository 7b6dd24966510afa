"""Peak resident memory (RSS) of this process while a stage runs, where the kernel lets us reset the peak.

Linux keeps a high-water mark of the process's RSS (VmHWM in /proc/self/status) and resets it when
"5" is written to /proc/self/clear_refs (Linux 4.0+), so a stage's own peak is what the mark reads
at its end after a reset at its start. Elsewhere (macOS, or a /proc that refuses the write) the
figure is getrusage's ru_maxrss: the process's peak since it started, which includes earlier stages.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Optional

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new high-water mark; False where the platform cannot (the peak then spans the process)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> Optional[float]:
    """The high-water mark of this process's RSS in MiB (since reset_peak where that worked)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux
