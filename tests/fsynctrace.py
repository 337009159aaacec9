"""What a power cut would leave of the files a process made: its calls, watched with strace.

``traced(code, tmp_path)`` runs Python ``code`` in a child process under
``strace -f -y`` (every thread; each file descriptor printed with its path), which records in
order every open-for-create, write, fsync, rename, link and mkdir that succeeded. The child
then kills itself with SIGKILL: the crash comes right after its last call.

The crash model is what Linux file systems promise (ext4, XFS; what ALICE and the
"all file systems are not created equal" study assume): after a power cut a file holds what
it held at its last fsync, and a name (a created file, a rename or link target, a new
directory) exists only if its parent directory was fsync'd after the name was made. A file
written and renamed without fsync may come back empty or missing, whatever the process saw.

The tests fail, never skip, when strace is missing (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_CALLS = (
    ",".join(
        ("openat", "open", "creat", "write", "pwrite64", "writev", "fsync", "fdatasync"),
    )
    + ",rename,renameat,renameat2,link,linkat,mkdir,mkdirat"
)
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_DONE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^-?\d+<(.*)>$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _strace() -> str:
    binary = shutil.which("strace")
    if binary is None:
        pytest.fail("strace is missing: run scripts/test.sh (it installs strace)")
    return binary


class Trace:
    """The calls of one traced run, in order: ``(call, path, other_path)``."""

    def __init__(self, events: list[tuple[str, str, str]], stdout: str) -> None:
        self.events = events
        self.stdout = stdout

    def _last(self, kinds: set[str], path: str, before: int | None = None) -> int:
        end = len(self.events) if before is None else before
        for i in range(end - 1, -1, -1):
            kind, first, second = self.events[i]
            if kind in kinds and (second == path if kind in ("rename", "link") else first == path):
                return i
        return -1

    def _fsynced_after(self, path: str, index: int) -> bool:
        return any(kind == "fsync" and first == path for kind, first, _ in self.events[index + 1 :])

    def lost_on_power_cut(self, path: Path) -> list[str]:
        """Why ``path`` (a file or a directory the run made) might be missing or incomplete
        after a power cut at the end of the run; empty when it is safe."""
        target = str(path)
        problems: list[str] = []
        made = self._last({"create", "rename", "link", "mkdir"}, target)
        if made < 0:
            return [f"{target}: the run never made it"]
        kind, origin, _ = self.events[made]
        parent = str(Path(target).parent)
        if not self._fsynced_after(parent, made):
            problems.append(f"{target}: its directory {parent} was not fsync'd after the {kind}")
        if kind == "mkdir":
            return problems
        content = origin if kind in ("rename", "link") else target
        written = max(self._last({"write"}, content), self._last({"write"}, target))
        if written >= 0 and not any(
            k == "fsync" and f in (content, target) for k, f, _ in self.events[written + 1 :]
        ):
            problems.append(f"{target}: its data was not fsync'd after it was written")
        return problems


def _parse(lines: list[str]) -> list[tuple[str, str, str]]:
    events: list[tuple[str, str, str]] = []
    pending: dict[str, str] = {}
    for raw in lines:
        match = _LINE.match(raw.strip())
        if match is None:
            continue
        pid, text = match.groups()
        if text.endswith("<unfinished ...>"):
            pending[pid] = text.removesuffix("<unfinished ...>").rstrip()
            continue
        resumed = re.match(r"^<\.\.\. \w+ resumed>(.*)$", text)
        if resumed:
            text = pending.pop(pid, "") + resumed.group(1)
        done = _DONE.match(text)
        if done is None or int(done.group(3)) < 0:
            continue
        call, args = done.group(1), done.group(2)
        event = _event(call, args)
        if event is not None:
            events.append(event)
    return events


def _arg_path(argument: str) -> str:
    argument = argument.strip()
    fd = _FD_PATH.match(argument)
    if fd:
        return fd.group(1)
    string = _STRING.match(argument)
    return string.group(1) if string else ""


def _split(args: str) -> list[str]:
    parts, depth, current, quoted = [], 0, "", False
    for i, ch in enumerate(args):
        if ch == '"' and (i == 0 or args[i - 1] != "\\"):
            quoted = not quoted
        if not quoted and ch in "<[{":
            depth += 1
        elif not quoted and ch in ">]}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def _at(dirfd: str, name: str) -> str:
    if name.startswith("/"):
        return name
    base = _arg_path(dirfd.removeprefix("AT_FDCWD")) if dirfd != "AT_FDCWD" else os.getcwd()
    return str(Path(base) / name)


def _event(call: str, args: str) -> tuple[str, str, str] | None:
    a = _split(args)
    if call in ("write", "pwrite64", "writev"):
        return ("write", _arg_path(a[0]), "")
    if call in ("fsync", "fdatasync"):
        return ("fsync", _arg_path(a[0]), "")
    if call in ("open", "creat"):
        if call == "creat" or "O_CREAT" in a[1]:
            return ("create", _at("AT_FDCWD", _arg_path(a[0])), "")
        return None
    if call == "openat":
        return ("create", _at(a[0], _arg_path(a[1])), "") if "O_CREAT" in a[2] else None
    if call in ("rename", "link"):
        return (call, _at("AT_FDCWD", _arg_path(a[0])), _at("AT_FDCWD", _arg_path(a[1])))
    if call in ("renameat", "renameat2", "linkat"):
        kind = "link" if call == "linkat" else "rename"
        return (kind, _at(a[0], _arg_path(a[1])), _at(a[2], _arg_path(a[3])))
    if call == "mkdir":
        return ("mkdir", _at("AT_FDCWD", _arg_path(a[0])), "")
    if call == "mkdirat":
        return ("mkdir", _at(a[0], _arg_path(a[1])), "")
    return None


def traced(code: str, tmp_path: Path, *, timeout: float = 60) -> Trace:
    """Run ``code`` (Python, in the repository's interpreter) under strace, then SIGKILL the
    child right after it. ``code`` may print what the test needs to read back."""
    log = tmp_path / "strace.log"
    script = code + (
        "\nimport os, signal, sys\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    completed = subprocess.run(
        [
            _strace(),
            "-f",
            "-y",
            "-qq",
            "-s",
            "0",
            "-e",
            f"trace={_CALLS}",
            "-o",
            str(log),
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert completed.returncode in (-9, 137), completed.stderr[-3000:]
    return Trace(_parse(log.read_text().splitlines()), completed.stdout)
