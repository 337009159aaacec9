"""Every ``docs/…`` path the README, the example config, the docs and the code name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*\w")


def named_paths() -> dict[str, set[str]]:
    """Each ``docs/…`` path mentioned in a tracked text file → the files that mention it."""
    files = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.toml", "*.example", "Dockerfile", "*.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found: dict[str, set[str]] = {}
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        for match in DOC_PATH.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(match.rstrip("."), set()).add(name)
    return found


def test_every_named_docs_path_exists() -> None:
    named = named_paths()
    assert "docs/api.md" in named, "the scan finds nothing: the pattern is broken"
    missing = {path: sorted(where) for path, where in named.items() if not (ROOT / path).exists()}
    assert not missing, f"named but missing: {missing}"
