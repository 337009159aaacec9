"""The ``gateway`` command, run as a real subprocess against a real spool."""

from __future__ import annotations

import argparse
import email
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from tests.conftest import GatewayThread, make_config

ROOT = Path(__file__).resolve().parents[2]


def gateway_cli(
    *args: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n{body}')
    return path


BROKEN = "[smtp]\nmax_recipients = 5\nmax_recipient = 6\n"


def test_check_config_names_the_bad_key_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BROKEN)
    result = gateway_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}:5: smtp.max_recipient: unknown key" in result.stderr


def test_serve_refuses_an_invalid_config_with_the_same_message(tmp_path: Path) -> None:
    path = write_config(tmp_path, BROKEN)
    result = gateway_cli("-c", str(path), "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}:5: smtp.max_recipient: unknown key" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing may start on a bad config"


def test_check_config_summarizes_a_good_file(tmp_path: Path) -> None:
    result = gateway_cli("check-config", str(ROOT / "gateway.toml.example"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "smtp listener dev: 127.0.0.1:2525" in result.stdout


def test_missing_secret_is_named(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[providers.relay]\ntype = "smtp"\nhost = "h"\npassword = "${GW_NO_SUCH_SECRET}"\n',
    )
    result = gateway_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "providers.relay.password: environment variable GW_NO_SUCH_SECRET is not set" in (
        result.stderr
    )


CAPTURE = """
[smtp]
listeners = [{ name = "dev", port = 0, tls = "none", insecure_auth = true }]
[delivery]
providers = ["capture"]
"""


@pytest.fixture
def spool_with_mail(tmp_path: Path, gateway_factory) -> tuple[Path, list[str]]:
    """A spool holding one delivered message (capture) and one deferred (relay refused)."""
    body = CAPTURE
    path = write_config(tmp_path, body)
    config = make_config(tmp_path, body)
    clock = FakeClock()
    gw: GatewayThread = gateway_factory(config, clock=clock, deliver=False)
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(
            "app@example.com",
            ["first@example.org"],
            b"From: app@example.com\r\nSubject: First\r\n\r\nhello\r\n",
        )
        client.sendmail(
            "app@example.com",
            ["second@example.net", "third@example.net"],
            b"From: app@example.com\r\nSubject: Second\r\n\r\nhello\r\n",
        )
    assert gw.call(gw.gateway.dispatcher.run_once()) == 3
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(
            "app@example.com",
            ["waiting@example.com"],
            b"From: app@example.com\r\nSubject: Waiting\r\n\r\nhello\r\n",
        )
    ids = sorted({d.message_id for d in gw.call(gw.gateway.store.list_deliveries(_all()))})
    return path, ids


def _all():
    from gateway.store.base import DeliveryFilter

    return DeliveryFilter(limit=1000)


def test_queue_list_filters_by_status_recipient_and_domain(spool_with_mail, tmp_path) -> None:
    path, _ = spool_with_mail
    everything = gateway_cli("-c", str(path), "queue", "list", "--all", cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.count("delivered") == 3
    assert "queued" in everything.stdout
    queued = gateway_cli("-c", str(path), "queue", "list", "--status", "queued", cwd=tmp_path)
    assert "waiting@example.com" in queued.stdout and "first@" not in queued.stdout
    by_domain = gateway_cli(
        "-c", str(path), "queue", "list", "--all", "--domain", "EXAMPLE.NET", cwd=tmp_path
    )
    assert "second@example.net" in by_domain.stdout and "third@example.net" in by_domain.stdout
    assert "first@" not in by_domain.stdout
    by_rcpt = gateway_cli(
        "-c", str(path), "queue", "list", "--all", "--recipient", "First@example.org", cwd=tmp_path
    )
    assert "first@example.org" in by_rcpt.stdout and "second@" not in by_rcpt.stdout


def test_queue_show_lists_deliveries_and_attempts(spool_with_mail, tmp_path) -> None:
    path, ids = spool_with_mail
    shown = gateway_cli("-c", str(path), "queue", "show", ids[0], "--raw", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "to <first@example.org>: delivered, 1 attempt(s)" in shown.stdout
    assert "capture    sent" in shown.stdout
    assert "Subject: First" in shown.stdout
    missing = gateway_cli("-c", str(path), "queue", "show", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "no message nope" in missing.stderr


def test_queue_retry_and_delete(spool_with_mail, tmp_path) -> None:
    path, ids = spool_with_mail
    refused = gateway_cli("-c", str(path), "queue", "delete", cwd=tmp_path)
    assert refused.returncode != 0 and "--all" in refused.stderr
    retried = gateway_cli("-c", str(path), "queue", "retry", "--status", "queued", cwd=tmp_path)
    assert "1 deliveries will be retried now" in retried.stdout
    deleted = gateway_cli("-c", str(path), "queue", "delete", ids[-1], cwd=tmp_path)
    assert "1 deliveries deleted" in deleted.stdout
    after = gateway_cli("-c", str(path), "queue", "list", "--all", cwd=tmp_path)
    assert "waiting@example.com" not in after.stdout
    assert after.stdout.count("delivered") == 3


def test_queue_purge_removes_old_messages_whose_deliveries_are_final(
    tmp_path: Path, gateway_factory
) -> None:
    body = CAPTURE
    path = write_config(tmp_path, body)
    forty_days_ago = FakeClock(time.time() - 40 * 86400)
    gw: GatewayThread = gateway_factory(
        make_config(tmp_path, body), clock=forty_days_ago, deliver=False
    )
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(
            "app@example.com",
            ["done@example.org"],
            b"From: app@example.com\r\nSubject: 1\r\n\r\nhi\r\n",
        )
        assert gw.call(gw.gateway.dispatcher.run_once()) == 1
        client.sendmail(
            "app@example.com",
            ["waiting@example.org"],
            b"From: app@example.com\r\nSubject: 2\r\n\r\nhi\r\n",
        )

    bad = gateway_cli("-c", str(path), "queue", "purge", "--older-than", "soon", cwd=tmp_path)
    assert bad.returncode != 0 and "--older-than: not a duration: 'soon'" in bad.stderr
    kept = gateway_cli("-c", str(path), "queue", "purge", "--older-than", "41d", cwd=tmp_path)
    assert "0 messages removed" in kept.stdout, kept.stderr
    purged = gateway_cli("-c", str(path), "queue", "purge", cwd=tmp_path)  # store.retention: 30d
    assert "1 messages removed (accepted over 30d ago" in purged.stdout, purged.stderr
    after = gateway_cli("-c", str(path), "queue", "list", cwd=tmp_path)
    assert "waiting@example.org" in after.stdout and "done@example.org" not in after.stdout


def test_outbox_lists_captured_mail(spool_with_mail, tmp_path) -> None:
    path, _ = spool_with_mail
    result = gateway_cli("-c", str(path), "outbox", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("<app@example.com> →") == 3
    assert "'First'" in result.stdout and "'Second'" in result.stdout
    eml = [line.split()[0] for line in result.stdout.splitlines() if line.endswith("bytes)")]
    assert all(Path(p).read_bytes().startswith(b"Received: ") for p in eml)


def test_hash_password_output_is_accepted_by_the_config(tmp_path: Path) -> None:
    hashed = gateway_cli("hash-password", "--stdin", cwd=tmp_path, stdin="correct horse\n")
    assert hashed.returncode == 0, hashed.stderr
    value = hashed.stdout.strip()
    assert value.startswith("scrypt$")
    path = write_config(
        tmp_path,
        f'[[tenants.acme.smtp_users]]\nusername = "app"\npassword_hash = "{value}"\n',
    )
    assert gateway_cli("check-config", str(path), cwd=tmp_path).returncode == 0
    from gateway.passwords import verify_password

    assert verify_password(b"correct horse", value)
    assert not verify_password(b"wrong horse", value)


# --- CLI habits ---------------------------------------------------------------------------


def test_config_flag_is_accepted_after_the_subcommand(spool_with_mail, tmp_path) -> None:
    path, ids = spool_with_mail
    before = gateway_cli("-c", str(path), "queue", "list", "--all", cwd=tmp_path)
    after = gateway_cli("queue", "list", "--all", "-c", str(path), cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout and ids[0] in after.stdout


def test_queue_list_shows_arrival_size_sender_and_a_total_and_hides_finished(
    spool_with_mail, tmp_path
) -> None:
    path, _ = spool_with_mail
    waiting = gateway_cli("-c", str(path), "queue", "list", cwd=tmp_path)
    assert waiting.returncode == 0, waiting.stderr
    assert "waiting@example.com" in waiting.stdout and "first@example.org" not in waiting.stdout
    header, message_line, *_ = waiting.stdout.splitlines()
    assert header.split()[:4] == ["MESSAGE", "ARRIVED", "(UTC)", "SIZE"]
    queue_id, day, clock, size, sender = message_line.split()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and re.fullmatch(r"\d\d:\d\d:\d\d", clock)
    assert int(size) > 0 and sender == "<app@example.com>"
    assert waiting.stdout.splitlines()[-1].startswith("-- 1 message(s), 1 delivery(ies), ")
    everything = gateway_cli("-c", str(path), "queue", "list", "--all", cwd=tmp_path)
    assert everything.stdout.count("delivered") == 3
    assert everything.stdout.splitlines()[-1].startswith("-- 3 message(s), 4 delivery(ies), ")
    shown = gateway_cli("-c", str(path), "queue", "show", queue_id, cwd=tmp_path)
    assert shown.returncode == 0 and "to <waiting@example.com>: queued" in shown.stdout


def test_queue_list_json_is_one_object_per_message(spool_with_mail, tmp_path) -> None:
    path, ids = spool_with_mail
    listed = gateway_cli("-c", str(path), "queue", "list", "--all", "--json", cwd=tmp_path)
    objects = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(o["queue_id"] for o in objects) == ids
    second = next(o for o in objects if len(o["recipients"]) == 2)
    assert second["sender"] == "app@example.com" and second["message_size"] > 0
    assert {r["address"] for r in second["recipients"]} == {
        "second@example.net",
        "third@example.net",
    }
    assert all(r["status"] == "delivered" for r in second["recipients"])


def test_queue_list_on_a_missing_spool_names_it_and_creates_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path, CAPTURE)
    result = gateway_cli("-c", str(path), "queue", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert f"no spool at {tmp_path / 'data' / 'spool'}" in result.stderr
    assert not (tmp_path / "data").exists()


def test_output_piped_into_head_ends_quietly(spool_with_mail, tmp_path) -> None:
    path, _ = spool_with_mail
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    result = subprocess.run(
        f"{sys.executable} -m gateway -c {path} queue list --all --limit 1000 | head -c 1",
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == "M"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_relative_paths_resolve_against_the_config_files_folder(
    spool_with_mail, tmp_path: Path
) -> None:
    _, ids = spool_with_mail
    relative = tmp_path / "conf" / "gateway.toml"
    relative.parent.mkdir()
    relative.write_text('[gateway]\ndata_dir = "../data"\n' + CAPTURE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = gateway_cli("-c", str(relative), "queue", "list", "--all", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert ids[0] in result.stdout
    assert not list(elsewhere.iterdir())


def test_an_unknown_provider_type_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[providers.main]\ntype = "sess"\n')
    result = gateway_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "providers.main.type: Invalid value 'sess'; the provider types are capture, smtp" in (
        result.stderr
    )


def test_every_positional_argument_and_option_has_help() -> None:
    from gateway.cli import build_parser

    def walk(parser: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{where} {name}")
            elif action.help is None:
                missing.append(f"{where}: {action.dest}")
        return missing

    assert walk(build_parser(), "gateway") == []


def test_check_config_warns_when_a_listener_accepts_mail_from_nobody(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[tenants.acme]\nsending_domains = ["acme.example"]\n')
    result = gateway_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0
    assert "warning: smtp listener dev (127.0.0.1:2525) accepts mail from nobody" in (result.stderr)
    trusted = write_config(tmp_path, '[tenants.default]\nsending_domains = ["acme.example"]\n')
    quiet = gateway_cli("check-config", str(trusted), cwd=tmp_path)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    assert "trusted networks 127.0.0.1/32, ::1/128" in quiet.stdout


def test_api_key_says_what_to_do_next(tmp_path: Path) -> None:
    result = gateway_cli("api-key", "--name", "svc", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("[[tenants.default.api_keys]]")
    assert "kill -HUP" in result.stderr and "check-config" in result.stderr


def test_send_builds_a_message_and_prints_the_queue_id(tmp_path: Path, gateway_factory) -> None:
    config = make_config(tmp_path, CAPTURE)
    gw: GatewayThread = gateway_factory(config, deliver=False)
    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n")
    result = gateway_cli(
        "send",
        "--server",
        f"127.0.0.1:{gw.port('dev')}",
        "--from",
        "app@example.com",
        "--to",
        "you@example.org",
        "--subject",
        "Report",
        "--attach",
        str(attachment),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    queue_id = result.stdout.split()[-1]
    stored = gw.call(gw.gateway.store.get_message(queue_id))
    assert stored is not None
    parsed = email.message_from_bytes(stored.raw)
    assert parsed["Subject"] == "Report" and parsed["Date"] and parsed["Message-ID"]
    (part,) = [p for p in parsed.walk() if p.get_filename()]
    assert part.get_filename() == "report.csv" and part.get_payload(decode=True) == b"a,b\n1,2\n"
    refused = gateway_cli(
        "send",
        "--server",
        "127.0.0.1:1",
        "--from",
        "a@b.example",
        "--to",
        "c@d.example",
        cwd=tmp_path,
    )
    assert refused.returncode == 1 and "gateway send: 127.0.0.1:1: " in refused.stderr
