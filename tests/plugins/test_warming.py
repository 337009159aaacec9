"""The warming plugin: schedules, caps under concurrency, per-ISP caps, pools and healthy-first
routing (``gateway_modify_routes``), pauses in ``gateway_permit``, and bad configuration."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from gateway_plugins.warming import PRESETS, Schedule

from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.events import Event, publish
from gateway.message import Defer, Delivery, DeliveryStatus, Message
from gateway.plugin_manager import call_all, call_first
from gateway.store.base import DeliveryFilter
from tests.api.conftest import API_CONFIG, Api, _key_tables
from tests.conftest import GatewayThread, Sink, make_config, wait_until

NOON = dt.datetime(2030, 3, 5, 12, 0, tzinfo=dt.UTC).timestamp()  # day 5 of a 03-01 start

IDENTITIES = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[providers.ip7]
type = "capture"
[providers.ip8]
type = "capture"
[providers.ip9]
type = "capture"

[delivery]
providers = ["ip7", "ip8", "ip9", "capture"]

[domains."brand.example"]
warming_schedule = "tiny"
warming_start = 2030-03-01
pool = "marketing"

[domains."later.example"]
warming_schedule = "conservative"
warming_start = 2030-04-01

[ips."198.51.100.7"]
provider = "ip7"
pool = "marketing"

[ips."198.51.100.8"]
provider = "ip8"
pool = "marketing"

[ips."198.51.100.9"]
provider = "ip9"
pool = "transactional"

[plugins.warming]
schedules = {{ tiny = [{{ day = 1, volume = 5 }}, {{ day = 10, volume = 50 }}] }}
per_isp = {per_isp}
min_sample = 10
"""


def message(sender: str = "news@brand.example") -> Message:
    return Message(id="m1", tenant="default", mail_from=sender, raw=b"", created_at=NOON)


def delivery(recipient: str, number: int = 1) -> Delivery:
    return Delivery(id=number, message_id="m1", recipient=recipient, status=DeliveryStatus.SENDING)


def start(tmp_path, gateway_factory, per_isp: bool = False) -> tuple[GatewayThread, FakeClock]:
    clock = FakeClock(NOON)
    config = make_config(tmp_path, IDENTITIES, per_isp=str(per_isp).lower())
    return gateway_factory(config, clock=clock, deliver=False), clock


async def permits(gw: GatewayThread, msg: Message, recipients: list[str], route: str) -> list:
    async def one(i: int, rcpt: str) -> Defer | None:
        verdict: Defer | None = await call_first(
            gw.gateway.pm,
            "gateway_permit",
            gateway=gw.gateway,
            message=msg,
            delivery=delivery(rcpt, i),
            route=route,
        )
        return verdict

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(recipients))))


def test_presets_have_the_issue_anchors_and_grow_geometrically_between_them() -> None:
    conservative = Schedule("conservative", PRESETS["conservative"])
    assert [conservative.volume(d) for d in range(1, 22)] == [
        50, 82, 136, 224, 368, 607, 1000,
        1472, 2168, 3192, 4700, 6919, 10188, 15000,
        19669, 25793, 33822, 44350, 58156, 76260, 100000,
    ]  # fmt: skip
    assert conservative.volume(22) is None  # warmed up: no cap
    moderate = Schedule("moderate", PRESETS["moderate"])
    assert [moderate.volume(d) for d in (1, 2, 7, 14)] == [100, 205, 7500, 100000]
    assert moderate.days == 14
    aggressive = Schedule("aggressive", PRESETS["aggressive"])
    assert [aggressive.volume(d) for d in range(1, 8)] == [
        200, 563, 1587, 4472, 12599, 35495, 100000,
    ]  # fmt: skip
    # 50 * 20 ** (1/6) = 82.41 (day 2); 1000 * 15 ** (1/7) = 1472.1 (day 8)


def test_a_cap_holds_under_many_concurrent_senders(tmp_path, gateway_factory) -> None:
    gw, _ = start(tmp_path, gateway_factory)
    # tiny, day 5: 5 * 10 ** (4/9) = 13.9 -> 14
    verdicts = gw.call(permits(gw, message(), [f"u{i}@inbox.example" for i in range(60)], "ip7"))
    assert sum(v is None for v in verdicts) == 14
    held = [v for v in verdicts if v is not None]
    midnight = dt.datetime(2030, 3, 6, tzinfo=dt.UTC).timestamp()
    assert {v.until for v in held} == {midnight}
    assert "warming cap of domain brand.example reached: 14 on day 5 of tiny" in held[0].reason
    warming = gw.gateway.plugin_state["warming"]
    status = gw.call(warming.status(warming.domains["brand.example"]))
    assert (status.cap_today, status.sent_today, status.deferred_today) == (14, 14, 46)
    assert status.cap_tomorrow == 18
    # A subdomain sender counts against its configured parent.
    bounce_sender = message("bounces@mail.brand.example")
    assert gw.call(permits(gw, bounce_sender, ["x@inbox.example"], "ip7"))[0] is not None
    gw.call(warming.refresh_usage())
    assert ("domain", "brand.example", 14, 14) in warming.usage_snapshot()


def test_per_isp_caps_count_each_mailbox_provider_apart(tmp_path, gateway_factory) -> None:
    gw, _ = start(tmp_path, gateway_factory, per_isp=True)
    recipients = [f"a{i}@gmail.com" for i in range(20)] + [f"b{i}@outlook.com" for i in range(20)]
    recipients += [f"c{i}@corp.example" for i in range(20)]
    verdicts = gw.call(permits(gw, message(), recipients, "capture"))
    allowed = [r for r, v in zip(recipients, verdicts, strict=True) if v is None]
    assert sum(r.endswith("@gmail.com") for r in allowed) == 14
    assert sum(r.endswith("@outlook.com") for r in allowed) == 14
    assert sum(r.endswith("@corp.example") for r in allowed) == 14
    warming = gw.gateway.plugin_state["warming"]
    status = gw.call(warming.status(warming.domains["brand.example"]))
    assert status.by_isp["gmail"].sent == 14 and status.by_isp["yahoo"].sent == 0
    assert status.sent_today == 42


def test_mail_waits_for_the_first_warming_day(tmp_path, gateway_factory) -> None:
    gw, _ = start(tmp_path, gateway_factory)
    (verdict,) = gw.call(permits(gw, message("hi@later.example"), ["x@inbox.example"], "capture"))
    assert verdict is not None
    assert verdict.until == dt.datetime(2030, 4, 1, tzinfo=dt.UTC).timestamp()
    assert "starts on 2030-04-01" in verdict.reason
    # Unconfigured senders and the null sender are not capped.
    assert gw.call(permits(gw, message("a@other.example"), ["x@y.example"], "capture")) == [None]
    assert gw.call(permits(gw, message(""), ["x@y.example"], "capture")) == [None]


def routes_for(gw: GatewayThread, sender: str) -> list[str]:
    routes = ["ip7", "ip8", "ip9", "capture"]

    async def call() -> None:
        await call_all(
            gw.gateway.pm,
            "gateway_modify_routes",
            gateway=gw.gateway,
            message=message(sender),
            delivery=delivery("x@inbox.example"),
            routes=routes,
        )

    gw.call(call())
    return routes


def test_routes_keep_the_pool_skip_paused_ips_and_prefer_healthy_ones(
    tmp_path, gateway_factory
) -> None:
    gw, clock = start(tmp_path, gateway_factory)
    assert routes_for(gw, "news@brand.example") == ["ip7", "ip8", "capture"]  # pool marketing
    assert routes_for(gw, "a@other.example") == ["ip7", "ip8", "ip9", "capture"]

    async def outcome(kind: str, provider: str, n: int) -> None:
        for i in range(n):
            await publish(
                gw.gateway,
                Event(
                    type=kind,  # type: ignore[arg-type]
                    tenant="default",
                    recipient=f"r{i}@inbox.example",
                    at=clock.now(),
                    provider=provider,
                    sending_domain="other.example",
                    bounce="hard" if kind == "bounced" else "",
                ),
                record=False,
            )

    # ip7 (established: halt thresholds): 9 delivered, 1 bounced = 10 outcomes, which is
    # min_sample; a 10 % bounce rate is above 2 % -> halted.
    gw.call(outcome("delivered", "ip7", 9))
    gw.call(outcome("bounced", "ip7", 1))
    warming = gw.gateway.plugin_state["warming"]
    pause = gw.call(warming.reputation.pause_of("ip", "198.51.100.7"))
    assert pause is not None and pause.reason.startswith("bounce rate 10.00% above 2%")
    # ip8: 20 delivered, 1 provider deferral. bounce 0 % -> 100, complaint 0 % -> 100,
    # delivery 20/21 = 95.24 % -> 76.19, no engagement data (left out):
    # (35 * 100 + 35 * 100 + 15 * 76.19) / 85 = 95.80 -> 96, EXCELLENT. ip9 has no data.
    gw.call(outcome("delivered", "ip8", 20))
    gw.call(outcome("deferred", "ip8", 1))
    health = gw.call(warming.reputation.health("ip", "198.51.100.8"))
    assert (health.score, health.tier) == (96, "EXCELLENT")
    clock.advance(1)
    gw.call(warming.refresh_ranks(force=True))  # tiers are otherwise re-read once a second
    # ip7 is paused: removed; ip8 (EXCELLENT) goes before ip9 (no data) and capture.
    assert routes_for(gw, "a@other.example") == ["ip8", "ip9", "capture"]
    # A paused IP's route is also held back by the permit (before routing wiring lands).
    (held,) = gw.call(permits(gw, message("a@fresh.example"), ["x@y.example"], "ip7"))
    assert held is not None and "ip 198.51.100.7 is paused" in held.reason


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[domains."a.example"]\nwarming_schedule = "turbo"\nwarming_start = 2030-01-01\n'
            "[plugins.warming]\n",
            "domains.\"a.example\".warming_schedule: no schedule named 'turbo'",
        ),
        (
            "[plugins.warming]\nschedules = { s = [{ day = 2, volume = 5 }] }\n",
            "plugins.warming.schedules.s[0].day: a schedule starts on day 1",
        ),
        (
            "[plugins.warming]\n"
            "schedules = { s = [{ day = 1, volume = 5 }, { day = 1, volume = 9 }] }\n",
            "plugins.warming.schedules.s[1].day: days must increase",
        ),
        (
            "[plugins.warming]\nschedules = { s = [{ day = 1, volume = 0 }] }\n",
            "plugins.warming.schedules.s[0].volume: must be at least 1",
        ),
        (
            "[plugins.warming]\nschedules = { moderate = [{ day = 1, volume = 5 }] }\n",
            "plugins.warming.schedules.moderate: a preset has this name",
        ),
        ('[plugins.warming]\ntimezone = "Mars/Olympus"\n', "unknown time zone 'Mars/Olympus'"),
        ("[plugins.warming]\nscale = 0\n", "plugins.warming.scale: must be more than 0"),
        ('[plugins.warming]\nisp_domains = { aol = ["x.com"] }\n', "isp_domains.aol: not one"),
        ('[plugins.warming]\npaused_retry = "soon"\n', "plugins.warming.paused_retry"),
        (
            "[plugins.warming]\npause = { bounce_percent = 150.0 }\n",
            "plugins.warming.pause.bounce_percent: a percentage from 0 to 100",
        ),
        ("[plugins.warming]\nwarmup = 1\n", "plugins.warming.warmup: unknown key"),
        ('[plugins.warming]\nmin_sample = "many"\n', "plugins.warming.min_sample: Expected `int`"),
    ],
)
def test_bad_warming_settings_name_the_key(tmp_path, toml: str, expected: str) -> None:
    from gateway.server import Gateway

    with pytest.raises(ConfigError) as excinfo:
        Gateway(make_config(tmp_path, toml))
    assert expected in str(excinfo.value)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[domains."a.example"]\nwarming_schedule = "moderate"\n',
            'test.toml:5: domains."a.example".warming_start: give the date of day 1',
        ),
        (
            '[domains."a.example"]\nwarming_start = 2030-01-01\n',
            "warming_schedule: warming_start needs a warming_schedule",
        ),
        ('[domains."a.example"]\nwarming_start = "soon"\n', "warming_start: Invalid"),
        ('[domains."a.example"]\npool = "blue"\n', "pool: no [ips] entry has pool = 'blue'"),
        ('[domains."not a domain"]\n', "not a domain: 'not a domain'"),
        ('[ips."1.2.3.4"]\nprovider = "nope"\n', "provider: no provider named 'nope'"),
        ('[ips."1.2.3.4"]\n', "required key is missing"),
        ('[ips."host.example"]\nprovider = "capture"\n', "not an IP address: 'host.example'"),
        (
            '[ips."1.2.3.4"]\nprovider = "capture"\n[ips."1.2.3.5"]\nprovider = "capture"\n',
            "provider 'capture' already sends from 1.2.3.4",
        ),
    ],
)
def test_bad_identities_name_the_key(tmp_path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_config(tmp_path, toml)
    assert expected in str(excinfo.value)


# --- auto-pause through the event path, the operator's API and CLI ------------------------------

PAUSE_CONFIG = (
    API_CONFIG
    + """
[domains."acme.test"]
warming_schedule = "conservative"
warming_start = 2027-01-10

[domains."promo.test"]

[plugins.warming]
min_sample = 20
pause = {{ bounce_percent = 5.0, complaint_percent = 0.5, delivery_percent = 90.0 }}
halt = {{ bounce_percent = 2.0, complaint_percent = 0.5, delivery_percent = 0.0 }}
"""
)


@pytest.fixture
def api_gateway(tmp_path, sink: Sink, gateway_factory) -> Iterator[Callable[[str], Api]]:
    """A gateway with the HTTP API (tests/api's tenants and keys) and ``template`` config;
    its FakeClock starts 2027-01-15 08:00 UTC: day 6 of acme.test's schedule."""
    made: list[Api] = []

    def factory(template: str) -> Api:
        config = make_config(
            tmp_path,
            template,
            port=sink.port,
            rate_limit=0.0,
            rate_burst=100,
            acme_keys=_key_tables("acme"),
            globex_keys=_key_tables("globex"),
        )
        clock = FakeClock()
        made.append(Api(gateway_factory(config, clock=clock, deliver=False), clock, sink))
        return made[-1]

    yield factory
    for api in made:
        api.close()


def push(api: Api, domain: str, kind: str, n: int, **fields: str) -> None:
    """``n`` events as provider webhooks publish them (each with its provider event id)."""

    async def publish_all() -> None:
        await asyncio.gather(
            *(
                publish(
                    api.gw.gateway,
                    Event(
                        type=kind,  # type: ignore[arg-type]
                        tenant="acme",
                        recipient=f"{kind}{i}@inbox.example",
                        at=api.clock.now(),
                        provider="relay",
                        sending_domain=domain,
                        event_id=f"{domain}-{kind}-{api.clock.now()}-{i}",
                        **fields,  # type: ignore[arg-type]
                    ),
                )
                for i in range(n)
            )
        )

    api.gw.call(publish_all())


def test_complaints_and_bounces_pause_until_the_operator_resumes(api_gateway, sink: Sink) -> None:
    api = api_gateway(PAUSE_CONFIG)
    clock = api.clock
    admin, reader = api.client("acme", "admin"), api.client("acme", "reader")
    # Complaints push the warming domain over its threshold: 1 in 20 delivered = 5 % > 0.5 %.
    push(api, "acme.test", "delivered", 20)
    assert reader.get("/v1/domains/acme.test/health").json()["paused"] is False
    push(api, "acme.test", "complained", 1)
    health = reader.get("/v1/domains/acme.test/health").json()
    assert health["paused"] is True
    assert health["pause_reason"] == "complaint rate 5.00% above 0.5% over 20 deliveries"
    # Bounces halt an established domain: 1 in 21 = 4.76 % > 2 %.
    push(api, "promo.test", "delivered", 20)
    push(api, "promo.test", "bounced", 1, bounce="hard")
    globex = api.client("globex", "operator")  # the operator scope spans tenants
    promo = globex.get("/v1/domains/promo.test/health").json()
    assert (promo["paused"], promo["counts"]["bounced"]) == (True, 1)
    assert promo["pause_reason"].startswith("bounce rate 4.76% above 2%")

    # The paused domain's mail waits in the queue.
    sent = api.client("acme", "sender").post(
        "/v1/messages",
        json={"from": "news@acme.test", "to": ["ann@example.org"], "subject": "Hi", "text": "x"},
    )
    assert sent.status_code == 202, sent.text
    api.gw.call(api.gw.gateway.dispatcher.run_once())
    (waiting,) = api.deliveries(sent.json()["id"])
    assert waiting.status == DeliveryStatus.DEFERRED and waiting.attempts == 0
    assert "domain acme.test is paused: complaint rate" in waiting.last_error
    assert waiting.next_attempt_at == clock.now() + 300  # paused_retry

    # Rates recover (1 complaint in 320 = 0.31 %): still paused, still waiting.
    push(api, "acme.test", "delivered", 300)
    health = reader.get("/v1/domains/acme.test/health").json()
    assert health["complaint_rate"] < 0.005 and health["paused"] is True
    clock.advance(600)
    api.gw.call(api.gw.gateway.dispatcher.run_once())
    assert api.deliveries(sent.json()["id"])[0].status == DeliveryStatus.DEFERRED
    assert sink.messages == []

    # Only the operator's call resumes it; a read key may not.
    assert reader.post("/v1/domains/acme.test/resume").status_code == 403
    resumed = admin.post("/v1/domains/acme.test/resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["resumed"] is True and resumed.json()["health"]["paused"] is False
    assert admin.post("/v1/domains/acme.test/resume").json()["resumed"] is False
    clock.advance(300)
    api.gw.call(api.gw.gateway.dispatcher.run_once())
    assert api.deliveries(sent.json()["id"])[0].status == DeliveryStatus.DELIVERED
    assert [m.rcpt_tos for m in sink.messages] == [["ann@example.org"]]
    assert globex.get("/v1/domains/promo.test/health").json()["paused"] is True  # untouched

    # The operator's view: a read key sees its tenant's domains only.
    listed = reader.get("/v1/domains").json()["domains"]
    assert [(d["name"], d["phase"], d["day"], d["cap_today"]) for d in listed] == [
        ("acme.test", "warming", 6, 607)
    ]
    assert listed[0]["sent_today"] == 1 and listed[0]["tier"] in ("EXCELLENT", "GOOD")
    assert reader.get("/v1/domains/promo.test/health").status_code == 404
    everything = {d["name"]: d for d in globex.get("/v1/domains").json()["domains"]}
    assert set(everything) == {"acme.test", "promo.test"}
    assert everything["promo.test"]["paused"] is True
    warming = reader.get("/v1/domains/acme.test/warming").json()
    assert (warming["schedule"], warming["day"], warming["cap_today"]) == ("conservative", 6, 607)
    assert (warming["sent_today"], warming["cap_tomorrow"]) == (1, 1000)
    assert globex.get("/v1/domains/nowhere/warming").status_code == 404


def test_without_the_plugin_the_domain_endpoints_say_so(api_gateway) -> None:
    api = api_gateway(API_CONFIG)
    response = api.client("acme", "admin").get("/v1/domains")
    assert response.status_code == 404
    assert "add [plugins.warming]" in response.json()["detail"]


def test_the_domains_cli_shows_and_resumes(tmp_path) -> None:
    from gateway.reputation import Reputation
    from gateway.store.sqlite import SqliteStore
    from tests.integration.test_cli import gateway_cli, write_config

    path = write_config(
        tmp_path,
        '[domains."brand.example"]\nwarming_schedule = "aggressive"\n'
        f"warming_start = {dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)}\n"
        "[plugins.warming]\n",
    )

    async def pause() -> None:
        store = SqliteStore(tmp_path / "data" / "spool")
        await store.open()
        try:
            await Reputation(store, FakeClock()).pause("domain", "brand.example", "bounces")
        finally:
            await store.close()

    asyncio.run(pause())
    checked = gateway_cli("check-config", str(path), cwd=tmp_path)
    assert "domain        brand.example: warming aggressive from" in checked.stdout
    listed = gateway_cli("-c", str(path), "domains", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "brand.example" in listed.stdout and "yes: bounces" in listed.stdout
    status = gateway_cli("-c", str(path), "domains", "warming", "brand.example", cwd=tmp_path)
    assert "day 2 of 7" in status.stdout and "cap today     563" in status.stdout
    health = gateway_cli("-c", str(path), "domains", "health", "brand.example", cwd=tmp_path)
    assert "NO_DATA" in health.stdout and "paused        yes: bounces" in health.stdout
    resumed = gateway_cli("-c", str(path), "domains", "resume", "brand.example", cwd=tmp_path)
    assert resumed.stdout.strip() == "domain brand.example: resumed"
    again = gateway_cli("-c", str(path), "domains", "resume", "brand.example", cwd=tmp_path)
    assert "was not paused" in again.stdout
    unknown = gateway_cli("-c", str(path), "domains", "health", "nowhere", cwd=tmp_path)
    assert unknown.returncode == 1 and "no sending domain or IP 'nowhere'" in unknown.stderr


WEBHOOK_WARMING = """
[domains."shop.example"]

[plugins.warming]
min_sample = 20
"""


def test_signed_webhook_complaints_and_bounces_pause_and_only_the_operator_resumes(
    tmp_path, gateway_factory
) -> None:
    from tests.integration.test_cli import gateway_cli
    from tests.providers.test_webhook_mailgun_postmark import JSON, mailgun_body
    from tests.providers.webhook_env import make_env

    env = make_env(tmp_path, gateway_factory, extra=WEBHOOK_WARMING)
    try:
        warming = env.gw.gateway.plugin_state["warming"]

        def health(name: str = "shop.example"):
            return env.gw.call(warming.reputation.health("domain", name))

        # 40 delivered through the dispatcher (capture provider); shop.example is established:
        # it halts above 2 % bounces or 0.1 % complaints.
        recipients = [f"r{i}@example.org" for i in range(40)]
        message_id, deliveries = env.deliver(*recipients)
        assert {d.status for d in deliveries} == {DeliveryStatus.DELIVERED}
        assert (health().counts.delivered, health().paused) == (40, False)
        # One Mailgun complaint, signed as Mailgun signs it: 1 in 40 = 2.5 % > 0.1 %.
        body = mailgun_body(env, "complained", message_id, deliveries[0].id, recipients[0])
        assert env.post("/webhooks/mailgun", body, JSON).status_code == 200
        paused = health()
        assert paused.paused and paused.pause_reason.startswith("complaint rate 2.50% above 0.1%")
        # A permanent failure reported later counts as a bounce: 1 in 41 = 2.44 % > 2 %.
        body = mailgun_body(env, "failed-permanent", message_id, deliveries[1].id, recipients[1])
        assert env.post("/webhooks/mailgun", body, JSON).status_code == 200
        assert (health().counts.bounced, health().pause_reason) == (1, paused.pause_reason)

        # New mail from the paused domain waits; the rates recover; it stays paused.
        later_id, [later] = env.deliver("later@example.org")
        assert later.status == DeliveryStatus.DEFERRED and "is paused" in later.last_error

        async def recovered() -> None:
            for i in range(2000):
                await publish(
                    env.gw.gateway,
                    Event(
                        type="delivered",
                        tenant="default",
                        recipient=f"x{i}@example.org",
                        at=env.clock.now(),
                        provider="capture",
                        sending_domain="shop.example",
                    ),
                    record=False,
                )

        env.gw.call(recovered())
        after = health()
        assert after.complaint_rate is not None and after.complaint_rate < 0.001
        assert after.bounce_rate is not None and after.bounce_rate < 0.02
        assert after.paused
        env.clock.advance(600)
        env.gw.call(env.gw.gateway.dispatcher.run_once())
        assert env.deliveries(later_id)[0].status == DeliveryStatus.DEFERRED

        # The operator resumes from another process (the CLI, on the same spool); the running
        # gateway sees it, and the waiting mail goes out.
        config = tmp_path / "operator.toml"
        config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n{WEBHOOK_WARMING}')
        done = gateway_cli("-c", str(config), "domains", "resume", "shop.example", cwd=tmp_path)
        assert done.stdout.strip() == "domain shop.example: resumed", done.stderr
        wait_until(lambda: not health().paused, what="the gateway to see the resume")
        env.clock.advance(300)
        env.gw.call(env.gw.gateway.dispatcher.run_once())
        assert env.deliveries(later_id)[0].status == DeliveryStatus.DELIVERED
    finally:
        env.client.close()


ROUTED = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[delivery]
providers = ["ip7", "ip8"]

[providers.ip7]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

[providers.ip8]
type = "smtp"
host = "127.0.0.1"
port = {port}
tls = "none"

[ips."198.51.100.7"]
provider = "ip7"
pool = "shared"

[ips."198.51.100.8"]
provider = "ip8"
pool = "dedicated"

[domains."vip.example"]
pool = "dedicated"

[plugins.warming]
"""


def test_dispatch_routes_around_a_paused_ip_and_keeps_a_domain_in_its_pool(
    tmp_path, sink: Sink, gateway_factory
) -> None:
    import smtplib

    clock = FakeClock(NOON)
    config = make_config(tmp_path, ROUTED, port=sink.port)
    gw = gateway_factory(config, clock=clock, deliver=False)
    warming = gw.gateway.plugin_state["warming"]

    def send(sender: str, recipient: str) -> str:
        with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
            client.sendmail(sender, [recipient], f"From: {sender}\r\n\r\nhi\r\n".encode())
        gw.call(gw.gateway.dispatcher.run_once())
        (found,) = [
            d
            for d in gw.call(gw.gateway.store.list_deliveries(DeliveryFilter(limit=1000)))
            if d.recipient == recipient
        ]
        assert found.status == DeliveryStatus.DELIVERED, found.last_error
        return found.provider

    assert send("a@other.example", "one@inbox.example") == "ip7"  # the configured order
    assert send("a@vip.example", "two@inbox.example") == "ip8"  # its pool only
    gw.call(warming.reputation.pause("ip", "198.51.100.7", "bounce rate 9% above 2%"))
    gw.call(warming.refresh_ranks(force=True))
    assert send("a@other.example", "three@inbox.example") == "ip8"  # around the paused IP
    gw.call(warming.reputation.resume("ip", "198.51.100.7"))
    assert send("a@other.example", "four@inbox.example") == "ip7"
    assert len(sink.messages) == 4


IP_WARMING = """
[smtp]
listeners = [{{ name = "dev", port = 0, tls = "none", insecure_auth = true }}]

[providers.ip7]
type = "capture"

[domains."brand.example"]
warming_schedule = "tiny"
warming_start = 2030-03-01

[ips."198.51.100.7"]
provider = "ip7"
warming_schedule = "tiny"
warming_start = 2030-03-04

[plugins.warming]
schedules = {{ tiny = [{{ day = 1, volume = 5 }}, {{ day = 10, volume = 50 }}] }}
"""


def test_an_ip_has_its_own_cap_and_a_refusal_gives_the_domain_unit_back(
    tmp_path, gateway_factory
) -> None:
    clock = FakeClock(NOON)  # the domain's day 5 (cap 14), the IP's day 2 (5 * 10^(1/9) = 6)
    config = make_config(tmp_path, IP_WARMING, unused=0)  # a str.format template
    gw = gateway_factory(config, clock=clock, deliver=False)
    warming = gw.gateway.plugin_state["warming"]
    through_ip = gw.call(permits(gw, message(), [f"a{i}@inbox.example" for i in range(10)], "ip7"))
    assert sum(v is None for v in through_ip) == 6
    held = [v for v in through_ip if v is not None]
    assert "warming cap of ip 198.51.100.7 reached: 6 on day 2 of tiny" in held[0].reason
    # The 4 the IP refused did not use the domain's units: 8 of its 14 remain for other routes.
    domain = gw.call(warming.status(warming.domains["brand.example"]))
    assert (domain.sent_today, domain.deferred_today) == (6, 0)
    other = gw.call(permits(gw, message(), [f"b{i}@inbox.example" for i in range(10)], "capture"))
    assert sum(v is None for v in other) == 8
    ip = gw.call(warming.status(warming.ips["198.51.100.7"]))
    assert (ip.kind, ip.day, ip.cap_today, ip.sent_today, ip.deferred_today) == ("ip", 2, 6, 6, 4)
