"""The leaf every layer may import: shared constants, the user-error classes, atomic file writes.

Nothing here imports torch or any other part of spcl, so ``method/``, ``models/``, ``data/``, the
engine and the command line can all depend on it without an import cycle.

Errors: :class:`UserError` is bad input the user can fix (a config key, a dataset on disk, a
checkpoint file, an argument); the command line prints its message in one line and exits with
status 2. :class:`NonFiniteLossError` is a training run that diverged (a NaN or infinite loss):
one line naming the stage, iteration and loss terms, exit status 1. Every other exception is a bug:
the command line shows its traceback and exits with 1.

YAML: :func:`load_yaml` is PyYAML's safe loader that also reads ``1e-4`` and ``5E3`` as numbers
(YAML 1.1 wants ``1.0e-4``, so plain PyYAML returns the string ``'1e-4'``), for config files,
``key=value`` overrides (lists included) and class tables alike.

Files: :func:`atomic_file` writes to a temporary file beside the destination and renames it into
place only when the write succeeded, so a crash or a full disk never leaves a half-written file
under the final name. The file gets the mode an ordinary ``open()`` would give it (``0o666``
less the process's umask), not the ``0o600`` of the temporary file, so colleagues sharing a server
can read models, predictions and metrics as their umask allows (:func:`file_mode`).
A failed write names the file (:func:`describe_os_error` turns a full disk or a read-only
folder into a one-line message).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import secrets
import shutil
import threading
from collections.abc import Hashable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "MissingFileError",
    "NonFiniteLossError",
    "OutputExistsError",
    "UnknownNameError",
    "UsageError",
    "UserError",
    "atomic_duplicate",
    "atomic_file",
    "atomic_write_bytes",
    "current_umask",
    "describe_os_error",
    "did_you_mean",
    "dir_mode",
    "file_mode",
    "load_yaml",
]

IGNORE_INDEX = 255  # label value that losses, metrics and pseudo-labels skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # input normalisation of torchvision's ImageNet weights
IMAGENET_STD = (0.229, 0.224, 0.225)  # (images in [0, 1], RGB)
FILE_BITS = 0o666  # what open() asks for; the umask removes bits from it
DIR_BITS = 0o777  # what mkdir() asks for
_PROC_STATUS = Path("/proc/self/status")  # Linux ≥ 4.7 shows the umask there ("Umask:\t0022")
_UMASK_LOCK = threading.Lock()  # the fallback sets the umask for a moment: one thread at a time
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)  # a new file only
TEMP_MODE = 0o600  # a temporary file is private until it is complete (then file_mode())
TEMP_NAME_BYTES = 6  # random bytes in a temporary file's name (12 hex digits, as unique as mkstemp)
TEMP_ATTEMPTS = 100  # names tried before giving up when they are taken (tempfile.mkstemp's count)


class UserError(Exception):
    """Bad input the user can fix; the message names the culprit (key, file, value)."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key and its origin (file or override)."""


class DatasetError(UserError, ValueError):
    """A dataset on disk does not have the expected layout or content; the message names it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or model file is missing, unsafe or does not fit; the message names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (in a config, an argument or a list) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """A command would overwrite files the user has not allowed it to replace."""


class UsageError(UserError, ValueError):
    """Command-line arguments that do not go together, or a file that would be overwritten."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss became NaN or infinite (names stage, iteration, every term).

    Not bad input and not a bug: the learning rate or the data made the loss blow up. The last
    checkpoint is left as it was, so a run can resume from it once the cause is fixed.
    """


class UnknownNameError(UserError, KeyError):
    """A name that is not in a registry (model, dataset kind, stage); the message lists them."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SCIENTIFIC = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@cache
def _loader() -> type:
    """PyYAML's safe loader with YAML 1.2's float syntax added: ``1e-4``, ``-2E+3``, ``.5e1``.

    Built on first use: PyYAML is imported only by the commands that read YAML (``spcl
    evaluate`` on folders never does; the import costs ~9 ms of its start-up).
    """
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            """A mapping that names a key twice is refused: PyYAML would keep the last value
            silently (a config edited twice trains with one of them, unsaid). Keys that YAML
            merges in (``<<: *anchor``) may still be overridden, as YAML means them to be."""
            if isinstance(node, yaml.MappingNode):
                first: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    if not isinstance(key, Hashable):  # PyYAML names it below
                        continue
                    line = key_node.start_mark.line + 1
                    if key in first:
                        raise yaml.YAMLError(
                            f"line {line}: key {key!r} appears twice in one mapping (first on "
                            f"line {first[key]}); YAML would keep the last value silently: "
                            f"keep one"
                        )
                    first[key] = line
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))
    return Loader


def load_yaml(text: str) -> Any:
    """Parse YAML text safely; numbers in scientific notation are floats (``1e-4`` → 0.0001).

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader: plain data only


def current_umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux)."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once (os.umask has no read-only form)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` without the umask's bits."""
    return FILE_BITS & ~current_umask()


def dir_mode() -> int:
    """The mode a new folder gets from ``mkdir()``: ``0o777`` without the umask's bits."""
    return DIR_BITS & ~current_umask()


def _temp_path(path: Path) -> Path:
    """A fresh name ``.NAME.<random>.tmp`` beside ``path`` (the pattern stale clean-up knows)."""
    return path.parent / f".{path.name}.{secrets.token_hex(TEMP_NAME_BYTES)}.tmp"


def _remove_temp(tmp: Path | None) -> None:
    if tmp is not None:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is synced and renamed to ``path``.

    The file gets the user's usual mode (:func:`file_mode`), not the temporary file's 0o600.
    On any exception the temporary file is removed and ``path`` is left as it was. Its name is
    chosen before it is created, inside the block that removes it, so Ctrl-C at any moment
    (even between the file's creation and the return of the call that made it) leaves no
    temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        for _ in range(TEMP_ATTEMPTS):
            tmp = _temp_path(path)
            try:
                fd = os.open(tmp, TEMP_FLAGS, TEMP_MODE)
                break
            except FileExistsError:
                tmp = None  # another writer's file: never ours to remove
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_temp(tmp)
        if exc.filename is not None and str(exc.filename) != str(tmp):
            raise  # names a file already (not the temporary one, which the user never sees)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc  # name the file
    except BaseException:
        _remove_temp(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_duplicate(source: str | Path, path: str | Path) -> None:
    """Make ``path`` a copy of the finished file ``source``, atomically: a second name of the
    same file (a hard link: no second write of a model of gigabytes), or a copy where the file
    system has no links. Files are replaced, never written in place, so the two stay apart."""
    source, path = Path(source), Path(path)
    tmp = _temp_path(path)
    try:
        os.link(source, tmp)
    except OSError:
        with atomic_file(path, "wb") as handle, source.open("rb") as original:
            shutil.copyfileobj(original, handle)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove_temp(tmp)
        raise


_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or point run.out elsewhere, then run the "
    "same command again (finished stages and the last checkpoint are kept)",
    errno.EDQUOT: "the disk quota is used up: free some space, then run the same command again",
    errno.EROFS: "the file system is read-only: choose a writable run.out",
    errno.EACCES: "no permission: check the folder's owner and mode, or choose another folder",
    errno.EPERM: "no permission: check the folder's owner and mode, or choose another folder",
}  # errors of the machine, not of spcl: the command line reports them in one line


def describe_os_error(exc: OSError) -> str | None:
    """A one-line message for a full disk, a read-only or a forbidden folder; None otherwise."""
    hint = _OS_ERROR_HINTS.get(exc.errno or 0)
    if hint is None:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; {hint}"
