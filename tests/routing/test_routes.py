"""Choosing routes: match keys, strategies, the default route, and bad route config."""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.config import Config, ConfigError
from gateway.message import Delivery, DeliveryStatus, Message
from gateway.providers import build_provider
from gateway.routing import Router, isp_of
from gateway.store.base import MessageMeta
from gateway.store.sqlite import SqliteStore
from tests.conftest import make_config

PROVIDERS = """
[delivery]
providers = ["a", "b"]

[providers.a]
type = "capture"
[providers.b]
type = "capture"
[providers.c]
type = "capture"

[tenants.default]
smtp_networks = ["127.0.0.1/32"]
[tenants.shop]
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "spool")
    await s.open()
    yield s
    await s.close()


def router(config: Config, store: SqliteStore, seed: int = 7) -> Router:
    providers = {n: build_provider(n, s, config) for n, s in config.providers.items()}
    return Router(config, providers, store=store, clock=FakeClock(), rng=random.Random(seed))


def message(
    tenant: str = "default", sender: str = "app@example.com", source: str = "smtp", n: int = 1
) -> Message:
    return Message(
        id=f"m{n}",
        tenant=tenant,
        mail_from=sender,
        raw=b"Subject: x\r\n\r\nx\r\n",
        created_at=1_800_000_000.0,
        source=source,  # type: ignore[arg-type]
    )


def delivery(recipient: str) -> Delivery:
    return Delivery(id=1, message_id="m1", recipient=recipient, status=DeliveryStatus.SENDING)


async def test_without_routes_the_delivery_providers_are_the_failover_list(
    tmp_path: Path, store: SqliteStore
) -> None:
    r = router(make_config(tmp_path, PROVIDERS), store)
    plan = await r.plan(message(), delivery("x@example.org"))
    assert (plan.route, plan.providers, plan.failover) == ("default", ["a", "b"], True)
    plan.providers.clear()  # a hook may edit the list in place: the next plan is unaffected
    assert (await r.plan(message(), delivery("x@example.org"))).providers == ["a", "b"]


async def test_the_first_matching_route_wins_by_tenant_sender_and_recipient(
    tmp_path: Path, store: SqliteStore
) -> None:
    config = make_config(
        tmp_path,
        PROVIDERS
        + """
[[routes]]
name = "shop-gmail"
providers = ["c"]
tenants = ["shop"]
recipient_domains = ["gmail.com", "*.example.net"]

[[routes]]
name = "marketing"
providers = ["b", "a"]
sending_domains = ["*.news.example.com"]
failover = false
""",
    )
    r = router(config, store)
    plan = await r.plan(message(tenant="shop"), delivery("ann@gmail.com"))
    assert (plan.route, plan.providers) == ("shop-gmail", ["c"])
    plan = await r.plan(message(tenant="shop"), delivery("ann@mx.example.net"))
    assert plan.route == "shop-gmail"
    # the default tenant, or another recipient domain, does not match the first route
    assert (await r.plan(message(), delivery("ann@gmail.com"))).route == "default"
    assert (await r.plan(message(tenant="shop"), delivery("ann@example.net"))).route == "default"
    plan = await r.plan(message(sender="a@eu.news.example.com"), delivery("x@example.org"))
    assert (plan.route, plan.providers, plan.failover) == ("marketing", ["b", "a"], False)
    assert (await r.plan(message(sender="a@news.example.com"), delivery("x@y.org"))).route == (
        "default"
    )


async def test_tags_match_http_api_messages(tmp_path: Path, store: SqliteStore) -> None:
    config = make_config(
        tmp_path,
        PROVIDERS + '[[routes]]\nname = "bulk"\nproviders = ["c"]\ntags = ["newsletter", "x"]\n',
    )
    r = router(config, store)
    tagged = message(source="http", n=1)
    await store.enqueue(
        tagged, ["a@example.org"], expires_at=2e9, meta=MessageMeta(tags=("newsletter",))
    )
    untagged = message(source="http", n=2)
    await store.enqueue(untagged, ["a@example.org"], expires_at=2e9, meta=MessageMeta())
    assert (await r.plan(tagged, delivery("a@example.org"))).route == "bulk"
    assert (await r.plan(untagged, delivery("a@example.org"))).route == "default"
    assert (await r.plan(message(source="smtp", n=3), delivery("a@example.org"))).route == (
        "default"
    )


async def test_isp_rules_know_the_big_mailbox_domains_without_dns(
    tmp_path: Path, store: SqliteStore
) -> None:
    config = make_config(
        tmp_path,
        PROVIDERS
        + """
[[routes]]
name = "microsoft"
providers = ["c"]
isps = ["microsoft", "yahoo"]
""",
    )
    r = router(config, store)
    assert (await r.plan(message(), delivery("a@hotmail.com"))).route == "microsoft"
    assert (await r.plan(message(), delivery("a@Yahoo.com"))).route == "microsoft"
    assert isp_of("gmail.com") == "gmail"
    assert isp_of("example.com", ["aspmx.l.google.com"]) == "gmail"
    assert isp_of("example.com", ["example-com.mail.protection.outlook.com"]) == "microsoft"
    assert isp_of("example.com", ["mx.example.com"]) == "other"


async def test_round_robin_starts_each_delivery_at_the_next_provider(
    tmp_path: Path, store: SqliteStore
) -> None:
    config = make_config(
        tmp_path,
        PROVIDERS
        + '[[routes]]\nname = "rr"\nproviders = ["a", "b", "c"]\nstrategy = "round_robin"\n',
    )
    r = router(config, store)
    orders = [(await r.plan(message(), delivery("x@y.org"))).providers for _ in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


async def test_weighted_picks_the_first_provider_in_proportion(
    tmp_path: Path, store: SqliteStore
) -> None:
    config = make_config(
        tmp_path,
        PROVIDERS + '[[routes]]\nname = "w"\nproviders = ["a", "b", "c"]\nstrategy = "weighted"\n'
        "weights = [6, 3, 1]\n",
    )
    r = router(config, store)
    firsts: collections.Counter[str] = collections.Counter()
    for _ in range(2000):
        plan = await r.plan(message(), delivery("x@y.org"))
        assert sorted(plan.providers) == ["a", "b", "c"]  # the rest follow as failover
        firsts[plan.providers[0]] += 1
    assert 1080 < firsts["a"] < 1320 and 480 < firsts["b"] < 720 and 120 < firsts["c"] < 280


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[routes]]\nname = "r"\nproviders = ["nowhere"]\n',
            "routes[0].providers[0]: no provider named 'nowhere' in [providers]",
        ),
        ('[[routes]]\nname = "r"\nproviders = []\n', "routes[0].providers: name at least one"),
        (
            '[[routes]]\nname = "r"\nproviders = ["a", "a"]\n',
            "routes[0].providers: a provider is listed twice",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a", "b"]\nstrategy = "weighted"\n'
            "weights = [1]\n",
            "routes[0].weights: give one weight per provider",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\nstrategy = "weighted"\nweights = [0]\n',
            "routes[0].weights: weights must be at least 1",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\nweights = [2]\n',
            'routes[0].weights: only used with strategy = "weighted"',
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\nstrategy = "random"\n',
            "routes[0].strategy: Invalid enum value 'random'",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\nisps = ["aol"]\n',
            "routes[0].isps[0]: Invalid enum value 'aol'",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\nrecipient_domains = ["gmail"]\n',
            "routes[0].recipient_domains[0]: not a domain or *.domain pattern: 'gmail'",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\ntenants = ["ghost"]\n',
            "routes[0].tenants[0]: no tenant named 'ghost'",
        ),
        (
            '[[routes]]\nname = "r"\nproviders = ["a"]\n[[routes]]\nname = "r"\n'
            'providers = ["b"]\n',
            "routes[1].name: duplicate route name 'r'",
        ),
        ("[routing.limits.ghost]\nper_second = 1\n", "routing.limits.ghost: no provider named"),
        ("[routing.limits.a]\nper_day = -1\n", "routing.limits.a.per_day: must be 0"),
        ("[routing.breaker]\nfailures = 0\n", "routing.breaker.failures: must be at least 1"),
        ("[routing.breaker]\nerror_rate = 1.5\n", "routing.breaker.error_rate: must be more"),
        ('[routing.breaker]\ncooldown = "soon"\n', "routing.breaker.cooldown:"),
        ('[routing]\nsend_timeout = "0s"\n', "routing.send_timeout: must be longer than 0s"),
        ('[routing]\nnameservers = ["dns.example"]\n', "routing.nameservers[0]: not an IP"),
    ],
)
def test_bad_routing_config_names_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, PROVIDERS + toml)
    assert expected in str(caught.value)


async def test_isp_and_mx_host_rules_look_up_the_domains_mx(
    tmp_path: Path, store: SqliteStore, dns_server
) -> None:
    dns = dns_server(
        {
            "corp.test": ["@ MX 10 aspmx.l.google.com.", "@ MX 20 alt1.aspmx.l.google.com."],
            "shop.test": ["@ MX 10 mx.shop.test.", "mx A 127.0.0.2"],
        }
    )
    config = make_config(
        tmp_path,
        PROVIDERS
        + f"""
[routing]
nameservers = ["127.0.0.1"]
dns_port = {dns.port}

[[routes]]
name = "google-hosted"
providers = ["c"]
isps = ["gmail"]

[[routes]]
name = "own-mx"
providers = ["b"]
mx_hosts = ["*.shop.test"]
""",
    )
    r = router(config, store)
    assert (await r.plan(message(), delivery("ceo@corp.test"))).route == "google-hosted"
    assert (await r.plan(message(), delivery("a@shop.test"))).route == "own-mx"
    # an unanswerable look-up: the MX rule does not match, the ISP is "other"
    assert (await r.plan(message(), delivery("a@unserved.test"))).route == "default"


async def test_an_idempotent_provider_is_asked_again_at_once_after_a_timeout(
    tmp_path: Path, store: SqliteStore
) -> None:
    from gateway.message import SendResult
    from gateway.providers.base import OutboundMessage, Provider

    class Deduplicating(Provider):
        idempotent = True

        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.keys: list[str] = []

        async def send(self, message: OutboundMessage) -> SendResult:
            key = f"{message.message_id}-{message.delivery_id}"
            self.keys.append(key)
            if len(self.keys) == 1:
                return SendResult.unknown("read timeout after the request went out")
            return SendResult.sent("accepted", provider_message_id=key)

    config = make_config(tmp_path, PROVIDERS)
    provider = Deduplicating("a")
    r = Router(config, {"a": provider}, store=store, clock=FakeClock())
    outbound = OutboundMessage(
        message_id="m1", delivery_id=7, tenant="default", mail_from="a@b.test",
        recipient="x@y.test", raw=b"x",
    )  # fmt: skip
    result = await r.send("a", outbound)
    assert result.kind == "sent" and provider.keys == ["m1-7", "m1-7"]
    assert r.provider_stats()["a"]["sent"] == 1


async def test_destination_failures_do_not_open_the_breaker(
    tmp_path: Path, store: SqliteStore
) -> None:
    """Direct MX: a greylisting or full mailbox says nothing about the provider's health."""
    from gateway.message import SendResult
    from gateway.providers.base import OutboundMessage, Provider

    class Greylisted(Provider):
        destination_failures = True

        async def send(self, message: OutboundMessage) -> SendResult:
            return SendResult.soft_fail("451 4.7.1 greylisted")

    config = make_config(tmp_path, PROVIDERS + "[routing.breaker]\nfailures = 2\n")
    r = Router(config, {"a": Greylisted("a")}, store=store, clock=FakeClock())
    outbound = OutboundMessage(
        message_id="m1", delivery_id=1, tenant="default", mail_from="a@b.test",
        recipient="x@y.test", raw=b"x",
    )  # fmt: skip
    for _ in range(5):
        assert (await r.send("a", outbound)).kind == "soft_fail"
    assert r.breaker_states() == {"a": "closed"}
    assert r.provider_stats()["a"]["failed"] == 5
