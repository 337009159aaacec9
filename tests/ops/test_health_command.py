"""``gateway health``, the Docker HEALTHCHECK: 0 against a running gateway, 1 against a stopped
one, through /healthz when HTTP is on and an SMTP NOOP when it is off (no container needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.ops.conftest import ServeProcess
from tests.redisserver import free_port

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def healthcheck_command() -> list[str]:
    """The Dockerfile's ``HEALTHCHECK ... CMD [...]``, exactly as the image runs it."""
    [line] = [x for x in DOCKERFILE.read_text().splitlines() if x.startswith("HEALTHCHECK")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "gateway"
    return command


def health(config_file: Path) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command, with the config where the image's ``GATEWAY_CONFIG`` says."""
    env = os.environ | {"GATEWAY_CONFIG": str(config_file)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *healthcheck_command()[1:]],
        cwd=config_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(tmp_path: Path, http: bool) -> tuple[Path, int, int]:
    smtp_port, http_port = free_port(), free_port()
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        f"""[gateway]
data_dir = "data"

[[smtp.listeners]]
name = "submission"
address = "0.0.0.0"
port = {smtp_port}
tls = "none"

[http]
enabled = {"true" if http else "false"}
port = {http_port}
"""
    )
    return config_file, smtp_port, http_port


@pytest.mark.parametrize("http", [True, False], ids=["healthz", "smtp-noop"])
def test_health_passes_against_a_running_gateway_and_fails_once_it_stops(
    tmp_path: Path, http: bool
) -> None:
    config_file, smtp_port, http_port = write_config(tmp_path, http)
    down = health(config_file)
    assert down.returncode == 1, down.stdout + down.stderr
    asked = f"127.0.0.1:{http_port}/healthz" if http else f"127.0.0.1:{smtp_port}"
    assert down.stderr.startswith("DOWN: ") and asked in down.stderr
    assert not (tmp_path / "data").exists(), "a health check makes no spool"

    serve = ServeProcess(config_file, tmp_path)
    try:
        wait_until(lambda: " ready (smtp" in serve.text(), 30, "the gateway to listen")
        up = health(config_file)
        assert up.returncode == 0, up.stderr + serve.text()
        assert up.stdout.startswith("ok: ") and asked in up.stdout
        assert ('"status":"ok"' in up.stdout) is http
    finally:
        assert serve.stop() == 0

    after = health(config_file)
    assert after.returncode == 1, after.stdout


def test_health_with_a_broken_config_is_unhealthy_not_docker_s_reserved_2(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.toml"
    config_file.write_text("[smtp]\nmax_recipient = 1\n")
    result = health(config_file)
    assert result.returncode == 1
    assert "DOWN: configuration error" in result.stderr
