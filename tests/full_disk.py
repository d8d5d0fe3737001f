"""A disk that fills up under an atomic write, for tests: the kernel's own ENOSPC, mid-write.

:func:`fill_disk_at` hands the n-th atomic write of a matching file a descriptor on a disk with
``free`` bytes left: writes reach the temporary file until those are used up (the last one in
part, as ``write(2)`` does), and then go to ``/dev/full``, where the kernel answers every write
with ENOSPC. The writer (torch.save's zip writer, PIL, json, YAML) meets the failure inside its
own ``write`` calls, as on a real full disk, not after it has returned. Linux only (``/dev/full``,
``/proc/self/fd``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

__all__ = ["DEV_FULL", "fill_disk_at", "needs_dev_full"]

DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC
needs_dev_full = pytest.mark.skipif(
    not (DEV_FULL.exists() and Path("/proc/self/fd").is_dir()), reason="needs Linux's /dev/full"
)


class _FillingDisk(io.RawIOBase):
    """A file descriptor on a disk with ``free`` bytes left."""

    def __init__(self, fd: int, free: int) -> None:
        super().__init__()
        self.fd, self.free = fd, free
        self.full = os.open(DEV_FULL, os.O_WRONLY)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        if self.free > 0:
            written = os.write(self.fd, bytes(data)[: self.free])
            self.free -= written
            return written
        return os.write(self.full, data)  # OSError(ENOSPC), from the kernel

    def close(self) -> None:
        if not self.closed:
            os.close(self.full)
            os.close(self.fd)
        super().close()


def fill_disk_at(monkeypatch: pytest.MonkeyPatch, match: str, nth: int = 1, free: int = 0) -> None:
    """The ``nth`` atomic write whose temporary file's path holds ``match`` fills the disk
    after ``free`` bytes."""
    real, seen = os.fdopen, []

    def fdopen(fd: int, mode: str = "r", *args, **kwargs):
        if "w" in mode and match in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) == nth:
                handle = io.BufferedWriter(_FillingDisk(fd, free))
                return handle if "b" in mode else io.TextIOWrapper(handle, kwargs.get("encoding"))
        return real(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
