"""One cohort run at a time per output folder.

A run holds ``OUT_DIR/.g3dvit-lock`` (an exclusive ``flock``) from planning to its group table.
A second run into the same folder is refused at once with who holds it; the lock goes with its
process (and the helper running its local workers, which inherits it), so a killed run never
leaves the folder locked (its file stays until the next run takes and removes it). The lock is
re-entrant within one process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from .inputs import CohortError

LOCK_NAME = ".g3dvit-lock"
_held: dict[str, list] = {}  # real folder path -> [file descriptor, depth]


class OutputBusy(CohortError):
    """Another run is writing into the same output folder."""


#: how long a run waits for the workers of a run whose command is gone to stop (they hold its lock)
WAIT_FOR_A_STOPPING_RUN_S = 20.0


def _facts(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _holder(facts: dict) -> str:
    if not facts:
        return ""
    since = time.strftime("%H:%M:%S", time.localtime(facts.get("since", 0)))
    return f" (process {facts.get('pid')} on {facts.get('host')}, since {since})"


def _stopping(facts: dict) -> bool:
    """The run that took the lock was on this machine and its command is gone: what still holds the
    lock is its helper stopping the workers (a matter of moments)."""
    if facts.get("host") != socket.gethostname() or not isinstance(facts.get("pid"), int):
        return False
    try:
        os.kill(facts["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def held_descriptors() -> tuple[int, ...]:
    """The open lock files of this process: a helper process that inherits them holds the folders
    until it exits too (flock belongs to the open file, shared by every process that has it)."""
    return tuple(fd for fd, _ in _held.values())


@contextmanager
def output_lock(out_dir: str | os.PathLike):
    """Hold the output folder for this run; OutputBusy when another run holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here; runs are not guarded
        yield
        return
    folder = Path(out_dir)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path = folder / LOCK_NAME
    deadline = time.monotonic() + WAIT_FOR_A_STOPPING_RUN_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            facts = _facts(path)
            if _stopping(facts) and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise OutputBusy(f"another g3dvit run is writing into {folder}{_holder(facts)}; wait for it to "
                             "finish, or give this run another output folder") from None
        try:  # the last holder may have removed the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        try:
            path.unlink()  # removed while still held, so no other run can take a file on its way out
        except OSError:
            pass
        os.close(fd)
