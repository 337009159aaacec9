"""``gateway api-key`` prints a key once and a config block holding only its hash."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.config import parse_config
from gateway.tenants import KeyRing, hash_api_key


def test_api_key_command_output_configures_a_working_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "api-key",
            "--tenant",
            "acme",
            "--name",
            "billing",
            "--scope",
            "send",
            "--scope",
            "read",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    key = re.search(r"gwk_[A-Za-z0-9_-]{43}", result.stderr)
    assert key is not None, result.stderr
    assert key.group() not in result.stdout, "the key itself never goes into the config"
    config = parse_config(result.stdout, source="generated")
    (entry,) = config.tenants["acme"].api_keys
    assert entry.key_hash == hash_api_key(key.group())
    assert entry.scopes == ["send", "read"]
    ring = KeyRing({entry.key_hash: None})  # type: ignore[dict-item]
    assert len(ring) == 1
