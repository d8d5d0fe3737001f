"""Failed writes of the run's log and TensorBoard files, named like every other failed write.

``logging`` answers a failed write (a full disk) by printing a traceback block on stderr and
carrying on without the line; TensorBoard's writer raises an ``OSError`` that names no file.
:class:`LogFile` and :class:`NamedWriter` turn both into the ``OSError`` of
:func:`spcl.base.atomic_file`: errno and the file's name, which the command line prints in one
line (exit status 2) like a full disk met while a checkpoint is written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["LogFile", "NamedWriter"]


def _named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` with ``path`` as its file name (kept when it names one already)."""
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


class LogFile(logging.FileHandler):
    """``log.txt``: a line that cannot be written stops the command, naming the file."""

    def handleError(self, record: logging.LogRecord) -> None:  # logging calls it by this name
        exc = sys.exc_info()[1]  # called from emit's except block: the error being handled
        if isinstance(exc, OSError):
            raise _named(exc, self.baseFilename) from exc
        super().handleError(record)


class NamedWriter:
    """A TensorBoard ``SummaryWriter`` whose failed writes name its folder."""

    def __init__(self, writer: Any, folder: Path) -> None:
        self._writer = writer
        self._folder = folder

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._writer, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except OSError as exc:
                raise _named(exc, self._folder) from exc

        return call
