"""Files that appear whole or not at all, alone or as a group.

Each file is written to a temporary file in its target's folder, flushed to disk, and only then
renamed over the target (a rename within one folder is atomic). A group (a checkpoint and its
config) is renamed together: when a later rename fails, the targets renamed before it are put
back as they were. An existing file is never touched by a write that fails; a failure leaves no
temporary file behind and comes out as ``OSError``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

Writer = Callable[[Path], None]


def _umask() -> int:
    """The process umask, read without changing it (Linux), else the common 022."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _mode_for(target: Path) -> int:
    """Keep an existing file's permissions; a new file gets what ``open`` would give it."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _suffix(target: Path) -> str:
    """``.nii.gz`` for ``x.nii.gz``: writers choose their format by the full suffix."""
    return "".join(target.suffixes) or ".tmp"


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every system opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def stage(target: Path, write: Writer) -> Path:
    """Write ``target``'s new content to a temporary file beside it; returns that file's path.

    ``write(path)`` writes the content. The file is flushed to disk and given the target's
    permissions. On any failure the temporary file is removed and the error is raised.
    """
    target = Path(target)
    tmp = temporary_beside(target)
    try:
        write(tmp)
        seal(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def temporary_beside(target: Path) -> Path:
    """A new, empty, hidden file in ``target``'s folder (``.<name>.XXXX<suffix>``) to write into."""
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_suffix(target))
    os.close(fd)
    return Path(name)


def seal(tmp: Path, target: Path) -> None:
    """Flush a finished temporary file to disk and give it the permissions ``target`` will have."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, _mode_for(target))


def discard(paths) -> None:
    """Remove temporary files that will not be committed (missing ones are fine)."""
    for path in paths:
        _remove(Path(path))


def commit(staged: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, target)`` over its target: all of them, or none.

    Targets that existed are kept as hard-linked backups until every rename has succeeded; if
    one fails, those renamed before it get their old content back (or are removed if they did
    not exist) and the error is raised. Temporary files never outlive the call.
    """
    backups: list[tuple[Path, Path | None]] = []
    done: list[int] = []
    try:
        for tmp, target in staged:
            backup = None
            if target.is_file():
                backup = target.with_name(f".{target.name}.{os.getpid()}.backup")
                _remove(backup)
                os.link(target, backup)
            backups.append((target, backup))
        for index, (tmp, target) in enumerate(staged):
            os.replace(tmp, target)
            done.append(index)
    except BaseException:
        for index in reversed(done):
            target, backup = backups[index]
            if backup is not None:
                os.replace(backup, target)
            else:
                _remove(target)
        raise
    finally:
        for tmp, _ in staged:
            _remove(tmp)
        for _, backup in backups:
            if backup is not None:
                _remove(backup)
        for folder in {target.parent for _, target in staged}:
            _fsync_folder(folder)


def write_together(files: Sequence[tuple[Path, Writer]]) -> None:
    """Write several files so that all of them change, or none does."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, write in files:
            staged.append((stage(Path(target), write), Path(target)))
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    commit(staged)


def write_atomic(target: Path, write: Writer) -> None:
    """Write one file so that it is either its complete new content or untouched."""
    write_together([(target, write)])
