"""Routing: which providers a delivery may go through, in which order, and whether one may
take it now.

* :meth:`Router.plan` — the first ``[[routes]]`` entry whose match keys all fit the delivery
  (tenant, sending domain, tag, recipient domain, ISP, MX host) decides the providers; its
  strategy orders them (priority, weighted, round-robin). No route matching means
  ``delivery.providers`` in order. The dispatcher then lets ``gateway_modify_routes`` reorder
  or remove candidates.
* :meth:`Router.available` — the provider's circuit breaker (``gateway/breaker.py``) is not
  open.
* :meth:`Router.reserve` — per-provider limits (``[routing.limits.<name>]``, sends per second
  and per UTC day), taken with the store's atomic ``consume`` so they hold across every
  worker and node. A provider over its limit is skipped; the delivery moves on to the next
  candidate, or is deferred (never dropped) until the limit's window ends.
* :meth:`Router.send` — the send itself under ``routing.send_timeout``, recording the outcome
  in the breaker and the per-provider counters.

Without ``[[routes]]`` and limits this costs a list copy and a few dict look-ups per delivery:
no store round trip, no DNS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.clock import Clock
from gateway.config import BreakerSection, Config, ProviderLimitSection, RouteSection
from gateway.message import Defer, Delivery, Message, SendResult
from gateway.mx_lookup import DnsResolver, LookupFailed
from gateway.providers.base import OutboundMessage, Provider
from gateway.store.base import Store
from gateway.streams import settings_of

log = logging.getLogger("gateway.routing")

DEFAULT_ROUTE = "default"
LIMIT_WINDOWS = (
    ("per_second", 1, "s", "s"),
    ("per_minute", 60, "min", "m"),
    ("per_hour", 3600, "h", "h"),
    ("per_day", 86400, "day", "d"),
)
"""``[routing.limits]`` keys: window length in seconds, unit in messages, counter tag."""
"""The name of the route made of ``delivery.providers``."""

ISP_DOMAINS: dict[str, frozenset[str]] = {
    "gmail": frozenset({"gmail.com", "googlemail.com"}),
    "microsoft": frozenset(
        {"outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "outlook.fr"}
    ),
    "yahoo": frozenset(
        {"yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "yahoo.fr"}
    ),
}
"""Consumer domains of the big mailbox providers, known without a DNS look-up."""

ISP_MX_SUFFIXES: dict[str, tuple[str, ...]] = {
    "gmail": (".google.com", ".googlemail.com"),
    "microsoft": (".outlook.com", ".hotmail.com"),
    "yahoo": (".yahoodns.net", ".yahoo.com", ".aol.com"),
}
"""MX host suffixes that reveal the mailbox provider of any other domain (Google Workspace,
Microsoft 365 …)."""


class RoutePlan(msgspec.Struct, kw_only=True):
    """The candidates for one delivery, in the order they will be tried."""

    route: str
    providers: list[str]
    """Reordered or filtered in place by ``gateway_modify_routes``."""
    failover: bool = True


def isp_of(domain: str, mx_hosts: Iterable[str] = ()) -> str:
    """``gmail`` / ``microsoft`` / ``yahoo`` by recipient domain or MX host, else ``other``."""
    for isp, domains in ISP_DOMAINS.items():
        if domain in domains:
            return isp
    for host in mx_hosts:
        for isp, suffixes in ISP_MX_SUFFIXES.items():
            if host.endswith(suffixes):
                return isp
    return "other"


def _domain_matcher(patterns: list[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact = frozenset(p.lower() for p in patterns if not p.startswith("*."))
    suffixes = tuple(p.lower()[1:] for p in patterns if p.startswith("*."))
    return exact, suffixes


def _domain_matches(domain: str, matcher: tuple[frozenset[str], tuple[str, ...]]) -> bool:
    exact, suffixes = matcher
    return domain in exact or (bool(suffixes) and domain.endswith(suffixes))


class _Facts:
    """What routes match on, for one delivery; the costly ones looked up once, when needed."""

    def __init__(self, router: Router, message: Message, delivery: Delivery) -> None:
        self.router = router
        self.message = message
        self.recipient_domain = delivery.domain
        self.sender_domain = message.mail_from.rpartition("@")[2].lower()
        self._tags: frozenset[str] | None = None
        self._mx: list[str] | None = None

    async def tags(self) -> frozenset[str]:
        if self._tags is None:
            self._tags = await self.router.tags_of(self.message)
        return self._tags

    async def mx_hosts(self) -> list[str]:
        if self._mx is None:
            self._mx = await self.router.mx_hosts_of(self.recipient_domain)
        return self._mx

    async def isp(self) -> str:
        known = isp_of(self.recipient_domain)
        if known != "other":
            return known
        return isp_of(self.recipient_domain, await self.mx_hosts())


class _Route:
    """A ``[[routes]]`` entry, prepared for matching and ordering."""

    def __init__(self, section: RouteSection, rng: random.Random) -> None:
        self.section = section
        self.name = section.name
        self.providers = list(section.providers)
        self.tenants = frozenset(section.tenants)
        self.senders = _domain_matcher(section.sending_domains)
        self.recipients = _domain_matcher(section.recipient_domains)
        self.tags = frozenset(section.tags)
        self.isps = frozenset(section.isps)
        self.mx = _domain_matcher(section.mx_hosts)
        self.needs_mx = bool(section.mx_hosts)
        self._rng = rng
        self._turn = itertools.count()

    async def matches(self, facts: _Facts) -> bool:
        s = self.section
        if self.tenants and facts.message.tenant not in self.tenants:
            return False
        if s.sending_domains and not _domain_matches(facts.sender_domain, self.senders):
            return False
        if s.recipient_domains and not _domain_matches(facts.recipient_domain, self.recipients):
            return False
        if self.tags and self.tags.isdisjoint(await facts.tags()):
            return False
        if self.isps and await facts.isp() not in self.isps:
            return False
        if self.needs_mx:
            hosts = await facts.mx_hosts()
            if not any(_domain_matches(host, self.mx) for host in hosts):
                return False
        return True

    def order(self) -> list[str]:
        providers = self.providers
        strategy = self.section.strategy
        if strategy == "round_robin":
            start = next(self._turn) % len(providers)
            return providers[start:] + providers[:start]
        if strategy == "weighted":
            (first,) = self._rng.choices(range(len(providers)), weights=self.section.weights)
            return [providers[first], *providers[:first], *providers[first + 1 :]]
        return list(providers)


def per_worker_breaker(settings: BreakerSection, workers: int) -> BreakerSection:
    """``[routing.breaker]`` as one of ``workers`` worker processes applies it.

    Each worker keeps its own breakers, so the counts are divided among the workers (rounded
    down, at least 1): the node as a whole sends a failing provider no more than ``failures``
    failed sends (and no more than ``min_sends`` sends before the error rate is judged).
    """
    if workers <= 1:
        return settings
    return msgspec.structs.replace(
        settings,
        failures=max(1, settings.failures // workers),
        min_sends=max(1, settings.min_sends // workers),
    )


class _Counts:
    __slots__ = ("failed", "limited", "rejected", "sent", "timeouts")

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.rejected = 0
        self.timeouts = 0
        self.limited = 0


class Router:
    """Routes, breakers and limits for one worker; ``gateway.router``."""

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        *,
        store: Store,
        clock: Clock,
        rng: random.Random | None = None,
        resolver: DnsResolver | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.providers = providers
        self.store = store
        self.clock = clock
        routing = config.routing
        self._config = config
        self._default = list(config.delivery.providers)
        self._default_failover = routing.failover
        rng = rng or random.Random()
        self._routes = [_Route(section, rng) for section in config.routes]
        self._limits: dict[str, ProviderLimitSection] = {
            name: limit
            for name, limit in routing.limits.items()
            if any(getattr(limit, key) for key, *_ in LIMIT_WINDOWS)
        }
        self._timeout = routing.send_timeout_seconds
        breaker = per_worker_breaker(routing.breaker, config.gateway.workers)
        self.breakers = {
            name: CircuitBreaker(name, breaker, clock, on_change=self._breaker_changed)
            for name in providers
        }
        self._counts = {name: _Counts() for name in providers}
        self._needs_dns = any(r.needs_mx or r.isps for r in self._routes)
        self._resolver = resolver
        if self._needs_dns and resolver is None:
            self._resolver = DnsResolver(routing.nameservers, routing.dns_port)
        self._tags: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()
        self._status_file = status_file
        self._status_dirty = False
        self._status_task: asyncio.Task[None] | None = None

    # --- choosing candidates -----------------------------------------------------------------

    async def plan(self, message: Message, delivery: Delivery) -> RoutePlan:
        """The providers to try for this delivery, in order: the message stream's own
        providers when it has them, else the first matching ``[[routes]]`` entry, else
        ``delivery.providers``."""
        stream = settings_of(self._config, message.tenant, message.stream)
        if stream.providers:
            return RoutePlan(
                route=f"stream:{message.stream}",
                providers=list(stream.providers),
                failover=self._default_failover,
            )
        if self._routes:
            facts = _Facts(self, message, delivery)
            for route in self._routes:
                if await route.matches(facts):
                    return RoutePlan(
                        route=route.name, providers=route.order(), failover=route.section.failover
                    )
        return RoutePlan(
            route=DEFAULT_ROUTE, providers=list(self._default), failover=self._default_failover
        )

    async def tags_of(self, message: Message) -> frozenset[str]:
        """The HTTP API tags of ``message`` (none for SMTP mail), cached for its deliveries."""
        if message.source != "http":
            return frozenset()
        cached = self._tags.get(message.id)
        if cached is not None:
            return cached
        record = await self.store.message_record(message.tenant, message.id)
        tags = frozenset(record.meta.tags) if record is not None else frozenset()
        self._tags[message.id] = tags
        if len(self._tags) > 4096:
            self._tags.popitem(last=False)
        return tags

    async def mx_hosts_of(self, domain: str) -> list[str]:
        """MX host names of ``domain``; empty when the look-up fails (the route's MX rule then
        does not match, and ISP rules see the domain as ``other``)."""
        if self._resolver is None:
            return []
        try:
            return [mx.host for mx in await self._resolver.mx(domain)]
        except LookupFailed as e:
            log.info("routing: %s", e)
            return []

    # --- may this provider take it now? ------------------------------------------------------

    def available(self, name: str) -> Defer | None:
        """``None`` when the breaker lets sends through, else when to come back."""
        breaker = self.breakers[name]
        state = breaker.state
        if state == "closed":
            return None
        if state == "open":
            return Defer(breaker.retry_at, f"{name}: circuit breaker open")
        if breaker._probing < breaker.settings.probes:
            return None
        wait = min(breaker.settings.cooldown_seconds, 10.0)
        return Defer(self.clock.now() + wait, f"{name}: circuit breaker half-open, probing")

    async def reserve(self, name: str) -> Defer | None:
        """Take one send from ``name``'s limits; ``Defer`` (nothing taken) when over one."""
        limit = self._limits.get(name)
        if limit is None:
            return None
        now = self.clock.now()
        # The shortest window first: a send counted there but refused by a longer one wastes
        # one slot of a short window, not of a day.
        for key, seconds, unit, tag in LIMIT_WINDOWS:
            allowed: int = getattr(limit, key)
            if not allowed:
                continue
            window = int(now // seconds)
            ends = (window + 1) * seconds
            counter = f"routing:{name}:{tag}:{window}"
            # Counters outlive their window a little, for clocks that differ between nodes.
            keep = ends + (1 if seconds == 1 else 3600 if seconds == 86400 else seconds)
            if not await self.store.consume(counter, 1, allowed, expires_at=keep, now=now):
                self._counts[name].limited += 1
                return Defer(float(ends), f"{name}: limit of {allowed}/{unit} reached")
        return None

    # --- sending -------------------------------------------------------------------------------

    async def send(self, name: str, message: OutboundMessage) -> SendResult:
        """Send through ``name`` and record the outcome. Never raises for a provider fault.

        A provider that does not answer within ``send_timeout`` may have accepted the message:
        the result is a ``soft_fail`` with ``maybe_sent``. A provider whose API makes resends
        harmless (``Provider.idempotent``) is asked once more at once; otherwise the caller
        does not hand the message to another provider now (see docs/routing.md).
        """
        provider = self.providers[name]
        breaker = self.breakers[name]
        if not breaker.allow():
            retry = self.available(name)
            return SendResult.soft_fail(retry.reason if retry else f"{name}: unavailable")
        result = await self._send_once(provider, message)
        if result.maybe_sent and provider.idempotent:
            result = await self._send_once(provider, message)
        self._record(provider, result)
        return result

    async def _send_once(self, provider: Provider, message: OutboundMessage) -> SendResult:
        try:
            async with asyncio.timeout(self._timeout):
                return await provider.send(message)
        except TimeoutError:
            return SendResult.unknown(f"{provider.name}: no answer within {self._timeout:g}s")
        except Exception as e:
            log.exception("provider %s raised while sending %s", provider.name, message.message_id)
            return SendResult.soft_fail(f"{provider.name}: provider error: {e!r}")

    def _record(self, provider: Provider, result: SendResult) -> None:
        counts = self._counts[provider.name]
        if result.kind == "sent":
            counts.sent += 1
        elif result.kind == "hard_fail":
            counts.rejected += 1
        else:
            counts.failed += 1
            counts.timeouts += result.maybe_sent
        # A hard failure is an answer: the provider works. Soft failures of providers that
        # reach many destinations (direct MX) say more about the destination than about them.
        failed = result.kind == "soft_fail" and not provider.destination_failures
        self.breakers[provider.name].record(not failed, result.detail)
        self._status_dirty = True

    # --- what operators see --------------------------------------------------------------------

    def breaker_states(self) -> dict[str, BreakerState]:
        return {name: breaker.state for name, breaker in self.breakers.items()}

    def provider_stats(self) -> dict[str, dict[str, int]]:
        """Per provider since start: ``sent``, ``failed`` (temporary, ``timeouts`` among them),
        ``rejected`` (permanent), ``limited`` (held back by a limit), ``opened`` (breaker)."""
        return {
            name: {
                "sent": c.sent,
                "failed": c.failed,
                "rejected": c.rejected,
                "timeouts": c.timeouts,
                "limited": c.limited,
                "opened": self.breakers[name].opened,
            }
            for name, c in self._counts.items()
        }

    def status(self) -> dict[str, Any]:
        """Breaker states, counters and last errors, as ``gateway providers`` reads them."""
        stats = self.provider_stats()
        return {
            "pid": os.getpid(),
            "updated_at": self.clock.now(),
            "providers": {
                name: {
                    "state": breaker.state,
                    "last_error": breaker.last_error,
                    **stats[name],
                }
                for name, breaker in self.breakers.items()
            },
        }

    def _breaker_changed(self, name: str, state: BreakerState) -> None:
        self._status_dirty = True

    async def start(self) -> None:
        if self._status_file is not None:
            self._status_dirty = True
            self._status_task = asyncio.create_task(self._publish_status(), name="routing-status")

    async def stop(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
            self._status_task = None
            await self._write_status()

    async def _publish_status(self) -> None:
        """Write the status file for the CLI at most once a second, when something changed."""
        while True:
            if self._status_dirty:
                await self._write_status()
            await asyncio.sleep(STATUS_INTERVAL)

    async def _write_status(self) -> None:
        assert self._status_file is not None
        self._status_dirty = False
        try:
            await asyncio.to_thread(_write_atomically, self._status_file, self.status())
        except OSError:
            log.exception("could not write %s", self._status_file)


STATUS_INTERVAL = 1.0


def status_dir(config: Config) -> Path:
    """Where each worker's router writes ``worker-<n>.json`` for ``gateway providers``."""
    return config.data_dir / "routing"


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per thread: a write cancelled at stop can still be running in its
    # thread when the final write starts, and a shared name made one of them fail.
    temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def read_status(config: Config, now: float | None = None) -> list[dict[str, Any]]:
    """Every worker's last written status (for the CLI), oldest worker file first."""
    directory = status_dir(config)
    found = []
    for path in sorted(directory.glob("worker-*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["age"] = (now if now is not None else time.time()) - float(data.get("updated_at", 0))
        found.append(data)
    return found
