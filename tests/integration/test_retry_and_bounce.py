"""Retries, bounces, lifetime and failover, with the clock moved by hand — no sleeping.

The gateway runs with ``deliver=False``; each test drives ``dispatcher.run_once()`` itself and
moves a ``FakeClock`` between runs, against the real sink SMTP server.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.message import Attempt, Delivery, DeliveryStatus, SendResult
from gateway.providers import OutboundMessage, Provider
from gateway.store.base import DeliveryFilter, DeliveryUpdate, StoreError
from tests.conftest import GatewayThread, Sink, make_config, wait_until
from tests.unit.test_dsn import parse_report

SENDER = "app@example.com"
RCPT = "user@example.org"
MINUTE = 60.0
NULL_PATH = "<>"
"""How the aiosmtpd sink records ``MAIL FROM:<>``."""

CONFIG = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = {providers}
retry_schedule = ["5m", "10m"]
max_lifetime = "30m"
dsn = {dsn}
concurrency = {concurrency}

[providers.relay]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

[providers.down]
type = "smtp"
host = "127.0.0.1"
port = {closed_port}
tls = "none"
timeout = 5

[providers.flaky]
type = "capture"
directory = "{outbox}"
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    gateway_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    sink: Sink,
    *,
    providers: tuple[str, ...] = ("relay",),
    dsn: bool = False,
    deliver: bool = False,
    concurrency: int = 100,
) -> tuple[GatewayThread, FakeClock]:
    clock = FakeClock()
    config = make_config(
        tmp_path,
        CONFIG,
        providers="[" + ", ".join(f'"{p}"' for p in providers) + "]",
        dsn="true" if dsn else "false",
        concurrency=concurrency,
        port=sink.port,
        closed_port=closed_port(),
        outbox=tmp_path / "outbox",
    )
    return gateway_factory(config, clock=clock, deliver=deliver), clock


def submit(gw: GatewayThread, recipient: str = RCPT, sender: str = SENDER) -> None:
    body = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: retry test\r\n"
        f"Message-ID: <retry-test@example.com>\r\n\r\nhello\r\n"
    ).encode()
    options = ["SMTPUTF8"] if not (sender + recipient).isascii() else []
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(sender, [recipient], body, mail_options=options)


def run_once(gw: GatewayThread) -> int:
    return gw.call(gw.gateway.dispatcher.run_once())


def deliveries(gw: GatewayThread, **where: object) -> list[Delivery]:
    return gw.call(gw.gateway.store.list_deliveries(DeliveryFilter(**where)))  # type: ignore[arg-type]


def the_delivery(gw: GatewayThread, recipient: str = RCPT) -> Delivery:
    (delivery,) = deliveries(gw, recipient=recipient)
    return delivery


def attempts(gw: GatewayThread, delivery: Delivery) -> list[Attempt]:
    return gw.call(gw.gateway.store.attempts(delivery))


# --- temporary failure, then success ------------------------------------------------------------


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_a_451_is_retried_after_the_scheduled_wait(
    tmp_path: Path, sink: Sink, gateway_factory, stage: str
) -> None:
    gw, clock = start(gateway_factory, tmp_path, sink)
    sink.script(RCPT, stage, ["451 4.3.0 try later"])
    submit(gw)
    t0 = clock.now()

    assert run_once(gw) == 1
    assert sink.to(RCPT) == []
    first = the_delivery(gw)
    assert first.status is DeliveryStatus.DEFERRED
    assert first.next_attempt_at == t0 + 5 * MINUTE, "first wait of the schedule"
    assert "451 4.3.0 try later" in first.last_error

    assert run_once(gw) == 0, "not due yet"
    clock.advance(5 * MINUTE - 1)
    assert run_once(gw) == 0, "one second early is still early"
    assert sink.to(RCPT) == []

    clock.advance(1)
    assert run_once(gw) == 1
    (received,) = sink.to(RCPT)
    assert received.mail_from == SENDER
    assert b"Subject: retry test" in received.data
    done = the_delivery(gw)
    assert done.status is DeliveryStatus.DELIVERED
    assert done.attempts == 2
    assert done.provider == "relay" and done.provider_message_id.startswith("SINK")
    tries = attempts(gw, done)
    assert [(a.provider, a.outcome, a.at) for a in tries] == [
        ("relay", "soft_fail", t0),
        ("relay", "sent", t0 + 5 * MINUTE),
    ]
    assert run_once(gw) == 0


# --- permanent failure --------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", [True, False])
def test_a_550_bounces_at_once(tmp_path: Path, sink: Sink, gateway_factory, dsn: bool) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink, dsn=dsn)
    sink.script(RCPT, "RCPT", ["550 5.1.1 no such user here"])
    submit(gw)

    assert run_once(gw) == (2 if dsn else 1), "the bounce, then its DSN if enabled"
    bounced = the_delivery(gw)
    assert bounced.status is DeliveryStatus.BOUNCED and bounced.status.is_terminal
    assert "550 5.1.1 no such user here" in bounced.last_error
    assert bounced.attempts == 1
    (attempt,) = attempts(gw, bounced)
    assert (attempt.provider, attempt.outcome) == ("relay", "hard_fail")
    assert sink.to(RCPT) == []

    notices = sink.to(SENDER)
    if not dsn:
        assert notices == []
        assert len(deliveries(gw)) == 1, "no DSN was even queued"
        return
    (notice,) = notices
    assert notice.mail_from == NULL_PATH, "a DSN has the null reverse-path"
    assert notice.rcpt_tos == [SENDER]
    report = parse_report(notice.data)
    assert report.message["To"].addresses[0].addr_spec == SENDER
    (recipient,) = report.per_recipient
    assert recipient["Final-Recipient"] == f"rfc822; {RCPT}"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert "no such user here" in recipient["Diagnostic-Code"]
    assert "Subject: retry test" in report.headers.get_content()
    dsn_delivery = the_delivery(gw, SENDER)
    assert dsn_delivery.status is DeliveryStatus.DELIVERED


def test_a_dsn_that_bounces_gets_no_dsn_of_its_own(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink, dsn=True)
    sink.script(RCPT, "RCPT", ["550 5.1.1 no such user"])
    sink.script(SENDER, "RCPT", ["550 5.1.1 the sender does not exist either"])
    submit(gw)
    assert run_once(gw) == 2
    assert the_delivery(gw, SENDER).status is DeliveryStatus.BOUNCED
    assert len(deliveries(gw)) == 2, "the original and one DSN, no DSN about the DSN"
    assert sink.messages == []


def test_a_dsn_to_an_internationalized_sender_is_delivered(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    sender = "jörg@exämple.com"
    gw, _ = start(gateway_factory, tmp_path, sink, dsn=True)
    sink.script(RCPT, "RCPT", ["550 5.1.1 no such user"])
    submit(gw, sender=sender)
    assert run_once(gw) == 2
    assert the_delivery(gw, sender).status is DeliveryStatus.DELIVERED
    (notice,) = sink.to("jörg@xn--exmple-cua.com")  # the domain goes out as A-labels
    assert notice.mail_from == NULL_PATH


def test_the_dsn_is_queued_before_the_bounce_is_recorded(
    tmp_path: Path, sink: Sink, gateway_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the process dies between the two writes, the sender must still hear of the bounce:
    at worst twice, never not at all. The bounce's first write fails (a store fault); by then
    the DSN is already queued, and the bounce is written again until it is recorded."""
    gw, _ = start(gateway_factory, tmp_path, sink, dsn=True)
    store = gw.gateway.store
    record = store.complete
    queued_at_first_write: list[list[Delivery]] = []

    async def fail_first_bounce(updates: list[DeliveryUpdate], now: float) -> None:
        if any(u.status is DeliveryStatus.BOUNCED for u in updates) and not queued_at_first_write:
            queued_at_first_write.append(await store.list_deliveries(DeliveryFilter()))
            raise StoreError("the process died here")
        await record(updates, now)

    monkeypatch.setattr(store, "complete", fail_first_bounce)
    sink.script(RCPT, "RCPT", ["550 5.1.1 no such user"])
    submit(gw)
    run_once(gw)
    (before,) = queued_at_first_write
    assert SENDER in {d.recipient for d in before}, "the DSN was queued before the bounce"
    assert the_delivery(gw).status is DeliveryStatus.BOUNCED, "recorded on a later try"
    (notice,) = sink.to(SENDER)
    assert parse_report(notice.data).per_recipient[0]["Status"] == "5.1.1"


# --- lifetime -----------------------------------------------------------------------------------


def test_a_delivery_that_keeps_failing_expires_with_a_dsn(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, clock = start(gateway_factory, tmp_path, sink, dsn=True)
    sink.script(RCPT, "RCPT", ["451 4.4.1 no answer from host"] * 10)
    submit(gw)
    t0 = clock.now()

    # Attempts at 0, 5 and 15 minutes; at 25 the next wait (10m) would pass the 30m lifetime.
    for wait, attempt_number in ((0, 1), (5, 2), (10, 3)):
        clock.advance(wait * MINUTE)
        assert run_once(gw) == 1
        waiting = the_delivery(gw)
        assert (waiting.status, waiting.attempts) == (DeliveryStatus.DEFERRED, attempt_number)
    assert waiting.next_attempt_at == t0 + 25 * MINUTE

    clock.advance(10 * MINUTE)
    assert run_once(gw) == 2, "the last attempt, then the DSN"
    expired = the_delivery(gw)
    assert expired.status is DeliveryStatus.EXPIRED and expired.status.is_terminal
    assert expired.attempts == 4
    assert "gave up after 4 attempt(s)" in expired.last_error
    assert "451 4.4.1 no answer from host" in expired.last_error
    assert [a.at - t0 for a in attempts(gw, expired)] == [0, 5 * MINUTE, 15 * MINUTE, 25 * MINUTE]

    (notice,) = sink.to(SENDER)
    (recipient,) = parse_report(notice.data).per_recipient
    assert (recipient["Action"], recipient["Status"]) == ("failed", "5.4.7")
    assert sink.to(RCPT) == []
    clock.advance(24 * 60 * MINUTE)
    assert run_once(gw) == 0, "terminal: never tried again"


def test_a_delivery_claimed_after_its_lifetime_expires_without_an_attempt(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, clock = start(gateway_factory, tmp_path, sink, dsn=False)
    submit(gw)
    clock.advance(31 * MINUTE)  # say the gateway was down all that time
    assert run_once(gw) == 1
    expired = the_delivery(gw)
    assert expired.status is DeliveryStatus.EXPIRED
    assert "lifetime ran out after 0 attempt(s)" in expired.last_error
    assert attempts(gw, expired) == []
    assert sink.messages == []


# --- failover and misbehaving providers ---------------------------------------------------------


def test_failover_to_the_next_provider_when_the_first_is_down(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink, providers=("down", "relay"))
    submit(gw)
    assert run_once(gw) == 1
    assert len(sink.to(RCPT)) == 1
    delivered = the_delivery(gw)
    assert (delivered.status, delivered.provider) == (DeliveryStatus.DELIVERED, "relay")
    first, second = attempts(gw, delivered)
    assert (first.provider, first.outcome) == ("down", "soft_fail")
    assert "cannot connect" in first.detail
    assert (second.provider, second.outcome) == ("relay", "sent")


def test_a_hard_failure_does_not_fail_over(tmp_path: Path, sink: Sink, gateway_factory) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink, providers=("relay", "down"))
    sink.script(RCPT, "RCPT", ["550 5.7.1 refused"])
    submit(gw)
    run_once(gw)
    bounced = the_delivery(gw)
    assert bounced.status is DeliveryStatus.BOUNCED
    assert [a.provider for a in attempts(gw, bounced)] == ["relay"]


class FlakyProvider(Provider):
    """Stands in for a third-party provider whose client library raises."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.broken = True
        self.sent: list[OutboundMessage] = []

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.broken:
            raise RuntimeError("client library blew up")
        self.sent.append(message)
        return SendResult.sent("accepted", provider_message_id="FLAKY-1")


def test_a_provider_that_raises_defers_and_later_delivers(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, clock = start(gateway_factory, tmp_path, sink, providers=("flaky",))
    flaky = FlakyProvider("flaky")
    gw.gateway.providers["flaky"] = flaky  # the dispatcher shares this dict
    assert gw.gateway.dispatcher.router.providers["flaky"] is flaky
    submit(gw)

    assert run_once(gw) == 1
    deferred = the_delivery(gw)
    assert deferred.status is DeliveryStatus.DEFERRED
    assert "client library blew up" in deferred.last_error
    (failure,) = attempts(gw, deferred)
    assert (failure.provider, failure.outcome) == ("flaky", "soft_fail")
    assert "provider error" in failure.detail

    flaky.broken = False
    clock.advance(5 * MINUTE)
    assert run_once(gw) == 1
    (sent,) = flaky.sent
    assert sent.recipient == RCPT and b"Subject: retry test" in sent.raw
    delivered = the_delivery(gw)
    assert delivered.status is DeliveryStatus.DELIVERED
    assert delivered.provider_message_id == "FLAKY-1"


class WrongResultProvider(Provider):
    """A provider bug of a different kind: it returns something that is not a SendResult."""

    async def send(self, message: OutboundMessage) -> SendResult:
        return "ok"  # type: ignore[return-value]


def test_a_bug_while_processing_defers_instead_of_losing_the_mail(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink, providers=("flaky",))
    gw.gateway.providers["flaky"] = WrongResultProvider("flaky")
    submit(gw)
    assert run_once(gw) == 1
    deferred = the_delivery(gw)
    assert deferred.status is DeliveryStatus.DEFERRED
    assert "internal error" in deferred.last_error


# --- the dispatcher loop (deliver=True; still no sleeping in the test) --------------------------


def test_the_delivery_loop_survives_a_store_fault_while_idle(
    tmp_path: Path, sink: Sink, gateway_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = start(gateway_factory, tmp_path, sink)  # deliver=False: we start the loop below
    store = gw.gateway.store
    real_next_due = store.next_due
    faults = [StoreError("database is locked")]

    async def next_due() -> float | None:
        if faults:
            raise faults.pop()
        return await real_next_due()

    monkeypatch.setattr(store, "next_due", next_due)

    async def start_loop() -> asyncio.Task[None]:
        return asyncio.create_task(gw.gateway.dispatcher.run())

    async def stop_loop(task: asyncio.Task[None]) -> None:
        await gw.gateway.dispatcher.stop(grace=5)
        await asyncio.wait([task], timeout=5)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    loop_task = gw.call(start_loop())
    try:
        wait_until(lambda: not faults, timeout=5, what="the loop to meet the fault")
        submit(gw)
        wait_until(lambda: len(sink.to(RCPT)) == 1, timeout=5, what="delivery after the fault")
    finally:
        gw.call(stop_loop(loop_task))


def test_a_full_dispatcher_claims_again_as_soon_as_a_slot_frees(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    """With every slot busy the loop must not wait for its idle poll (1 s) to take more."""
    gw, _ = start(gateway_factory, tmp_path, sink, deliver=True, concurrency=1)
    recipients = [f"user{n}@example.org" for n in range(8)]
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        for r in recipients:
            client.sendmail(SENDER, [r], b"From: <app@example.com>\r\nSubject: x\r\n\r\nx\r\n")
    wait_until(
        lambda: len(sink.messages) == len(recipients),
        timeout=3,
        what="8 deliveries through one slot well within the 1 s idle poll per message",
    )


class HangingProvider(Provider):
    """A next hop that never answers."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started = asyncio.Event()
        self.cancelled = False

    async def send(self, message: OutboundMessage) -> SendResult:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


def test_stop_cancels_sends_still_running_after_the_grace_period(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    gw, clock = start(gateway_factory, tmp_path, sink, providers=("flaky",), deliver=True)
    hanging = HangingProvider("flaky")
    gw.gateway.providers["flaky"] = hanging
    submit(gw)
    gw.call(asyncio.wait_for(hanging.started.wait(), 5))
    gw.call(gw.gateway.stop(grace=0.1))
    assert hanging.cancelled, "a send left running would outlive its store and event loop"

    # The interrupted delivery is still on disk as ``sending``: the next start retries it.
    reopened = GatewayThread(gw.gateway.config, clock=clock, deliver=False).start()
    try:
        (again,) = reopened.call(reopened.gateway.store.list_deliveries(DeliveryFilter()))
        assert again.status is DeliveryStatus.DEFERRED
        assert "interrupted" in again.last_error
    finally:
        reopened.stop()


def test_no_dsn_for_a_message_with_a_null_sender(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    """``MAIL FROM:<>`` (a bounce or auto-reply relayed through us) never gets a DSN back."""
    gw, _ = start(gateway_factory, tmp_path, sink, dsn=True)
    sink.script(RCPT, "RCPT", ["550 5.1.1 no such user"])
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("<>", [RCPT], b"From: <mailer-daemon@example.com>\r\n\r\nbounce\r\n")
    run_once(gw)
    assert the_delivery(gw).status is DeliveryStatus.BOUNCED
    assert len(deliveries(gw)) == 1, "no DSN queued, to '<>' or anywhere"
