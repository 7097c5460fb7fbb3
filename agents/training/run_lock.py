"""One writer per run folder: an advisory lock on ``RUN_DIR/.lock`` while a process trains into the folder.

:class:`agents.training.trainer.Trainer` takes it at the start of :meth:`~agents.training.trainer.Trainer.train`
(before anything is
written) and releases it when ``train`` returns; a second writer (a second run into the folder, a resume of a run
that is still training) is refused with :class:`RunFolderInUse`, naming the folder and the process that holds it.

The lock is ``fcntl.flock`` on the lock file: the kernel releases it when the process that holds it exits, however
it exits (a SIGKILL included), so a killed run never leaves its folder locked. The file itself stays (removing it
would race with a process about to lock it); it records the holder's pid and host, for the message. ``flock`` is
advisory and local: on a network file system whose ``flock`` is not shared between hosts, two hosts are not locked
out. Without ``fcntl`` (Windows), nothing is locked.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class RunFolderInUse(RuntimeError):
    """Another process is writing the run folder (it holds the folder's lock)."""


class RunFolderLock:
    """The lock of one run folder; :meth:`acquire` it (the folder must exist), :meth:`release` it (or ``with``)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunFolderLock:
        """Take the lock without waiting; :class:`RunFolderInUse` if another process (or another lock object of
        this process) holds it."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            logger.warning("cannot lock %s on this platform: a second writer would not be refused", self.run_dir)
            return self
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderInUse(
                f"{self.run_dir} is in use: another process is writing this run folder (lock {self.path} held by "
                f"{holder}); wait for it to finish or stop it, then resume the run (a killed process releases the "
                "lock)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (nothing if it is not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only descriptor of the open file releases the flock

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunFolderInUse", "RunFolderLock"]
