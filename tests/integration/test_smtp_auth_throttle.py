"""Password guessing: a cap on AUTH attempts per session, a delay that grows with a client's
failures, a cooling-off per client address and per username (``454 4.7.0``, the right
password included) that ends when its time is up, checks in a bounded pool so a guesser
cannot hold up a real login, and a log line fail2ban's shipped filter matches."""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.passwords import hash_password
from tests.conftest import GatewayThread, Sink, make_config
from tests.integration.smtp_client import RawSession, code, limit_hits

ROOT = Path(__file__).resolve().parents[2]
USERNAME = "app@acme.test"
PASSWORD = "c0rrect horse"
THROTTLE = """
[[smtp.listeners]]
name = "dev"
port = 0
tls = "none"
insecure_auth = true
max_connections_per_minute = 0

[smtp.auth]
max_attempts_per_session = 3
failure_delay = 0.1
max_failure_delay = 0.3
client_failures = {client_failures}
user_failures = {user_failures}
window = 600.0
cooling_off = 300.0

[tenants.acme]
sending_domains = ["acme.test"]

[[tenants.acme.smtp_users]]
username = "{username}"
password_hash = "{password_hash}"

[delivery]
providers = ["relay"]

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"
"""


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD, log2_n=14)  # the production cost: the pool test needs it


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gw(tmp_path, sink: Sink, gateway_factory, clock: FakeClock, password_hash) -> GatewayThread:
    config = make_config(
        tmp_path,
        THROTTLE,
        port=sink.port,
        username=USERNAME,
        password_hash=password_hash,
        client_failures=5,
        user_failures=8,
    )
    return gateway_factory(config, clock=clock)


def plain(username: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode()).decode()


def session(gw: GatewayThread, source: str = "127.0.0.2") -> RawSession:
    client = RawSession(gw.port("dev"), source)
    assert client.reply().startswith("220")
    assert client.command("EHLO client.test").startswith("250")
    return client


def attempt(gw: GatewayThread, password: str, source: str, username: str = USERNAME) -> str:
    with session(gw, source) as client:
        return client.command(plain(username, password))


def test_a_session_may_fail_auth_only_so_often(gw: GatewayThread) -> None:
    with session(gw) as client:
        replies = [client.command(plain(USERNAME, f"guess {i}")) for i in range(3)]
        assert [code(r) for r in replies] == [(535, "5.7.8")] * 3
        last = client.command(plain(USERNAME, PASSWORD))
        assert code(last) == (421, "4.7.0"), last
        assert client.closed()
    assert limit_hits(gw.gateway, "dev", "max_auth_attempts") == 1


def test_aborted_auth_counts_against_the_session(gw: GatewayThread) -> None:
    with session(gw) as client:
        for _ in range(3):
            assert client.command("AUTH PLAIN").startswith("334")
            assert code(client.command("*")) == (501, "5.7.0")
        assert code(client.command("AUTH PLAIN")) == (421, "4.7.0")
        assert client.closed()


def test_failures_are_delayed_more_and_more(gw: GatewayThread) -> None:
    durations = []
    with session(gw) as client:
        for i in range(3):
            started = time.monotonic()
            assert code(client.command(plain(USERNAME, f"guess {i}"))) == (535, "5.7.8")
            durations.append(time.monotonic() - started)
    # 0.1 s x the client's failures so far: 0.1, 0.2, 0.3 (plus the scrypt check).
    assert durations[0] >= 0.1 and durations[1] >= 0.2 and durations[2] >= 0.3, durations


def test_a_guessing_client_cools_off_then_gets_through(gw: GatewayThread, clock: FakeClock) -> None:
    for i in range(5):
        assert code(attempt(gw, f"guess {i}", "127.0.0.2")) == (535, "5.7.8")
    refused = attempt(gw, PASSWORD, "127.0.0.2")
    assert code(refused) == (454, "4.7.0"), "the right password does not work while cooling off"
    assert code(attempt(gw, PASSWORD, "127.0.0.3")) == (235, "2.7.0"), "another client may"
    assert limit_hits(gw.gateway, "dev", "auth_cooling_off") == 1
    clock.advance(301)
    assert code(attempt(gw, PASSWORD, "127.0.0.2")) == (235, "2.7.0")


def test_a_username_guessed_from_many_addresses_cools_off(
    gw: GatewayThread, clock: FakeClock
) -> None:
    """8 failures for one username from four addresses: it cools off for new clients, but not
    for the client that logged in as it before (guessers cannot lock a real app out)."""
    assert code(attempt(gw, PASSWORD, "127.0.0.30")) == (235, "2.7.0")
    sources = [f"127.0.0.{n}" for n in range(10, 14)]
    for i in range(8):
        assert code(attempt(gw, f"guess {i}", sources[i % 4])) == (535, "5.7.8")
    assert code(attempt(gw, PASSWORD, "127.0.0.20")) == (454, "4.7.0")
    assert code(attempt(gw, PASSWORD, "127.0.0.30")) == (235, "2.7.0")
    clock.advance(301)
    assert code(attempt(gw, PASSWORD, "127.0.0.20")) == (235, "2.7.0")


def test_unknown_users_are_throttled_the_same_way(gw: GatewayThread) -> None:
    for i in range(5):
        assert code(attempt(gw, "x", "127.0.0.2", username=f"nobody{i}@acme.test")) == (
            535,
            "5.7.8",
        )
    assert code(attempt(gw, PASSWORD, "127.0.0.2")) == (454, "4.7.0")


@pytest.mark.serial
def test_a_real_login_is_quick_while_others_guess(
    tmp_path, sink: Sink, gateway_factory, password_hash
) -> None:
    """Four guessers (two addresses, no cooling-off, another username) keep the password pool
    busy for 3 s; a legitimate login from a third address, never cached, still completes in
    well under a second."""
    config = make_config(
        tmp_path,
        THROTTLE,
        port=sink.port,
        username=USERNAME,
        password_hash=password_hash,
        client_failures=100_000,
        user_failures=100_000,
    )
    gw = gateway_factory(config)
    stop = time.monotonic() + 3
    guesses: list[str] = []
    errors: list[BaseException] = []

    def guess(source: str) -> None:
        try:
            while time.monotonic() < stop:
                with session(gw, source) as client:
                    for i in range(3):
                        guesses.append(client.command(plain("ceo@acme.test", f"guess {i}")))
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    guessers = [threading.Thread(target=guess, args=(s,)) for s in ("127.0.0.2", "127.0.0.3") * 2]
    for thread in guessers:
        thread.start()
    try:
        time.sleep(0.5)  # let the guessers fill the pool: the load is the scenario
        with session(gw, "127.0.0.9") as client:
            started = time.monotonic()
            reply = client.command(plain(USERNAME, PASSWORD))
            elapsed = time.monotonic() - started
        assert code(reply) == (235, "2.7.0")
        assert elapsed < 1.0, f"a real login took {elapsed:.2f}s under guessing"
    finally:
        for thread in guessers:
            thread.join(20)
    assert not errors
    assert {code(g) for g in guesses} == {(535, "5.7.8")}, "the guessers ran"


def test_failed_auth_log_line_matches_the_shipped_fail2ban_filter(
    gw: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    conf = (ROOT / "config/fail2ban/filter.d/gateway-smtp-auth.conf").read_text()
    failregex = re.search(r"^failregex = (.+)$", conf, re.M)
    assert failregex is not None
    pattern = re.compile(failregex.group(1).replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"))
    with caplog.at_level(logging.WARNING, logger="gateway.smtp"):
        attempt(gw, "wrong", "127.0.0.7", username="x client=192.0.2.1 user=")
    hosts = [
        m.group("host") for r in caplog.records if (m := pattern.search(r.getMessage())) is not None
    ]
    assert hosts == ["127.0.0.7"], "the client's address, never one a username could inject"
