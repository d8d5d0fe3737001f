"""What a run tells the person watching: progress bars, TensorBoard scalars and images, a log file.

Only rank 0 writes; other ranks get a tracker that does nothing. Console lines are written above a
live progress bar, never on its line; when the output is not a terminal, bars are plain lines
(:mod:`spcl.progress`).
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spcl.engine.disk_errors import LogFile, NamedWriter
from spcl.progress import progress_bar
from spcl.run_dir import RunDir

__all__ = ["Tracker"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_LOGGER_NUMBERS = itertools.count()  # one logger per tracker, never shared (id() is reused)


class _TqdmHandler(logging.Handler):
    """Console lines that do not break tqdm progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True):
            tqdm.write(self.format(record), file=sys.stderr)


class Tracker:
    """Console + log file + TensorBoard for one run directory.

    Args:
        run_dir: where ``log.txt`` and ``tensorboard/`` go.
        enabled: False on ranks other than 0 (nothing is written or shown).
        progress: show tqdm progress bars.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, progress: bool = True) -> None:
        self.enabled = enabled
        self.progress = progress and enabled
        self.run_dir = Path(run_dir)
        self.logger = logging.getLogger(f"spcl.run.{next(_LOGGER_NUMBERS)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self._writer: Any = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = LogFile(RunDir(self.run_dir).log)  # a failed write names the file
            file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
            console = _TqdmHandler()
            console.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(file_handler)
            self.logger.addHandler(console)

    @property
    def writer(self) -> Any:
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            folder = RunDir(self.run_dir).tensorboard
            self._writer = NamedWriter(SummaryWriter(log_dir=str(folder)), folder)
        return self._writer

    def info(self, message: str, console: bool = True) -> None:
        """A line in ``log.txt`` and (unless ``console`` is False) on the console."""
        if self.enabled:
            self.logger.info(message, extra={"console": console})

    def warning(self, message: str) -> None:
        """A warning: a line in ``log.txt`` (level WARNING) and on the console, even a muted one."""
        if self.enabled:
            self.logger.warning(message)

    def mute_console(self) -> None:
        """From now on, lines go to ``log.txt`` only, warnings excepted (``--fast-dev-run``
        prints its own lines, and shows the warnings a real run would give)."""
        for handler in list(self.logger.handlers):
            if isinstance(handler, _TqdmHandler):
                handler.setLevel(logging.WARNING)

    def scalars(self, tag: str, values: Mapping[str, float], step: int) -> None:
        """Scalars in TensorBoard (``TAG/key``) and one line in ``log.txt`` (on the console
        without bars), prefixed with the stage alone: ``online/val`` logs ``[online] iteration
        N: val/miou=…``, one prefix per stage."""
        if self.enabled:
            stage, _, group = tag.partition("/")
            group = f"{group}/" if group else ""
            text = " ".join(f"{group}{k}={v:.4g}" for k, v in values.items())
            self.info(f"[{stage}] iteration {step}: {text}", console=not self.progress)
            for key, value in values.items():
                self.writer.add_scalar(f"{tag}/{key}", value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        """A note in TensorBoard's text tab (an alert), beside the scalars of ``step``."""
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 picture in TensorBoard."""
        if self.enabled:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def bar(self, total: int, initial: int = 0, desc: str = "") -> Any:
        """A progress bar: tqdm's on a terminal, plain lines every 30 s when the output is a file
        (:func:`spcl.progress.progress_bar`); nothing with ``progress`` off."""
        return progress_bar(total=total, initial=initial, desc=desc, disable=not self.progress)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
