"""Files and directories the gateway relies on after a crash, made so a power cut cannot undo them.

A file's bytes are durable only once the file is fsync'd, and its name only once the directory
holding it is fsync'd; a rename alone may reach the disk before the data it points to (ext4's
delayed allocation, XFS). So every file goes temp → fsync → rename → fsync(directory), and every
directory created is followed by an fsync of its parent. Blocking: call from a thread
(``asyncio.to_thread``) on the event loop's side.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (new, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(directory: Path, *, mode: int = 0o777) -> None:
    """``mkdir -p`` whose every new directory survives a crash (its parent is fsync'd)."""
    directory = Path(directory).absolute()
    missing: list[Path] = []
    at = directory
    while not at.is_dir():
        missing.append(at)
        at = at.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            new.mkdir(mode=mode)
        fsync_directory(new.parent)


def write_file(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Put ``data`` at ``path`` atomically and durably: readers see the old file or the whole
    new one, and after a crash the new one is there in full once this returned.

    :param exclusive: fail with ``FileExistsError`` if ``path`` exists (never replace it).
    """
    path = Path(path)
    make_directories(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(temporary, path)  # fails if ``path`` exists, unlike a rename
            os.unlink(temporary)
        else:
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def rename(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` durably: both directories are fsync'd."""
    os.replace(source, target)
    fsync_directory(Path(target).parent)
    if Path(source).parent != Path(target).parent:
        fsync_directory(Path(source).parent)
