"""Every example config in ``config/`` loads through ``gateway check-config``, as shipped: its
relative paths resolve against its own folder (certificates are made beside the copy at test
time) and the environment variables it names are set as its comments say."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from gateway.passwords import hash_password
from gateway.providers.capture import read_outbox
from tests.conftest import wait_until
from tests.ops.conftest import ServeProcess
from tests.redisserver import free_port

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))
PASSWORD = "container-test-password"
ENVIRONMENT = {"GATEWAY_SMTP_PASSWORD_HASH": hash_password(PASSWORD)}
"""Values for the ``${VARIABLES}`` the example configs name; a new one goes here."""


def test_config_folder_has_examples() -> None:
    assert CONFIGS, "config/ holds the example configs"


def make_certificates(tls: Path) -> trustme.CA:
    """``fullchain.pem`` and ``privkey.pem`` for mail.example.com (and 127.0.0.1) in ``tls``,
    as certbot's live/ folder holds them."""
    tls.mkdir()
    ca = trustme.CA()
    issued = ca.issue_cert("mail.example.com", "127.0.0.1")
    for pem in issued.cert_chain_pems:
        pem.write_to_path(str(tls / "fullchain.pem"), append=True)
    issued.private_key_pem.write_to_path(str(tls / "privkey.pem"))
    return ca


def check_config(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"} | ENVIRONMENT
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("source", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads(source: Path, tmp_path: Path) -> None:
    text = source.read_text()
    named = set(
        re.findall(
            r"\$\{(\w+)\}",
            "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
        )
    )
    assert named <= ENVIRONMENT.keys(), f"give the test a value for {named - ENVIRONMENT.keys()}"
    config = tmp_path / "etc" / source.name
    config.parent.mkdir()
    shutil.copy(source, config)
    # Certificates where the config expects them (tls/ beside it, mounted in the container).
    make_certificates(config.parent / "tls")

    result = check_config(config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK" in result.stdout
    assert "warning" not in result.stderr, result.stderr


def test_docker_config_accepts_mail_over_tls_with_auth_and_is_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config/docker.toml served for real, with what only a container changes put back: the
    listeners on 127.0.0.1 and free ports instead of 0.0.0.0:587/465, the volume in tmp."""
    text = (CONFIG_DIR / "docker.toml").read_text()
    submission, submissions = free_port(), free_port()
    for old, new in (
        ('address = "0.0.0.0"', 'address = "127.0.0.1"'),
        ("port = 587", f"port = {submission}"),
        ("port = 465", f"port = {submissions}"),
        ('data_dir = "/var/lib/gateway"', 'data_dir = "data"'),
    ):
        assert old in text, f"config/docker.toml no longer says {old!r}"
        text = text.replace(old, new)
    etc = tmp_path / "etc"
    etc.mkdir()
    ca = make_certificates(etc / "tls")
    config = etc / "gateway.toml"
    config.write_text(text)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    serve = ServeProcess(config, tmp_path)
    try:
        wait_until(lambda: " ready (smtp" in serve.text(), 30, "the gateway to listen")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with smtplib.SMTP("127.0.0.1", submission, timeout=30) as client:
            client.starttls(context=context)
            client.login("app", PASSWORD)
            client.sendmail(
                "app@example.com",
                ["one@example.net"],
                b"From: app@example.com\r\nSubject: 587\r\n\r\nhi\r\n",
            )
        with smtplib.SMTP_SSL(
            "127.0.0.1",
            submissions,
            timeout=30,
            context=context,
        ) as client:
            client.login("app", PASSWORD)
            client.sendmail(
                "app@example.com",
                ["two@example.net"],
                b"From: app@example.com\r\nSubject: 465\r\n\r\nhi\r\n",
            )
        wait_until(
            lambda: (
                {e.recipient for e in read_outbox(etc / "data" / "outbox")}
                == {"one@example.net", "two@example.net"}
            ),
            30,
            "both messages in the volume's outbox",
        )
        healthy = subprocess.run(
            [sys.executable, "-m", "gateway", "health", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert healthy.returncode == 0, healthy.stderr
    finally:
        assert serve.stop() == 0
