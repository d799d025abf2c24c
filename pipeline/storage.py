"""Writing files so that a full or failing disk ends in one line and loses nothing: every file of a
run or a sweep is written whole to a temporary name and renamed into place (a file is either the
old one or the new one, never half of one), and a line appended to a log is taken back if it
could not be written in full. A storage fault (ENOSPC, EDQUOT, EIO) raises StorageError, whose
message names the file; the trainer and the sweep add what was kept and the command that finishes
the job once space is freed."""
from __future__ import annotations

import errno
import os
from pathlib import Path

FAULTS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error"}


class StorageError(OSError):
    """A write that failed for lack of space or a failing device; the CLI prints it as one line."""

    def __init__(self, message: str, finished: bool = False):
        super().__init__(message)
        self.message, self.finished = message, finished  # finished: the message says how to finish the job

    def __str__(self) -> str:
        return self.message

    def finished_by(self, kept: str, command: str) -> StorageError:
        """The same fault, saying what was kept and the command that finishes the job."""
        return StorageError(f"{self.message}; {kept}; once space is freed: {command}", True)


def _open(path: Path, mode: str):
    """Every file this module writes is opened here (tests inject storage faults at this point)."""
    return open(path, mode)


def _fault(e: OSError, path: Path) -> StorageError | None:
    if e.errno not in FAULTS:
        return None
    return StorageError(f"{Path(path).name} not written ({FAULTS[e.errno]}: {Path(path).parent})")


def write_file(path: Path, write, binary: bool = False, install=os.replace) -> Path:
    """write(f) writes the whole file into an open file object; it appears under `path` only once
    complete: install(tmp, path) moves `path`.tmp into place (a rename), and a failure removes it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        install(tmp, path)
    except BaseException as e:  # whatever failed (a full disk, a figure that cannot be drawn): no temporary left
        tmp.unlink(missing_ok=True)
        fault = _fault(e, path) if isinstance(e, OSError) else None
        if fault is None:
            raise
        raise fault from None
    return path


def write_text(path: Path, text: str) -> Path:
    return write_file(path, lambda f: f.write(text))


def append_line(path: Path, line: str) -> None:
    """One line appended whole, or not at all (a partial write is truncated away)."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with _open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as e:
        fault = _fault(e, path)
        if fault is None:
            raise
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise fault from None
