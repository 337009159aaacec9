"""Warming caps, sender reputation, auto-pause and healthy-first routing for sending identities.

A *sending identity* is a sending domain (``[domains."example.com"]``) or a dedicated IP
(``[ips."198.51.100.7"]``, tied to the provider — route — whose mail leaves from it). An
identity with a ``warming_schedule`` may send at most that day's volume; the warming day is
counted from its ``warming_start`` in ``timezone`` and caps reset at midnight there. A delivery
over a cap is deferred (``Defer``) to the next midnight: never dropped, never charged an
attempt, and — because deferred mail is due at midnight while new mail is due when it
arrives — served before the next day's new mail.

Counting uses the store's atomic ``consume`` on one counter per identity (and destination
ISP, with ``per_isp``) and local day, so a cap holds across every worker and node sharing the
store.

Every normalized event feeds :class:`gateway.reputation.Reputation`; an identity whose rates
breach the thresholds is paused (sticky, in the store) until an operator resumes it, and its
mail waits in the queue. ``gateway_modify_routes`` drops routes whose IP is paused or outside
the pool (the message stream's ``pool``, else the domain's), and tries healthier IPs first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
import zoneinfo
from fractions import Fraction
from typing import Any, Literal

import msgspec

from gateway.config import Config, ConfigError, DomainSection, IpSection, plugin_settings
from gateway.durations import parse_duration
from gateway.events import Event
from gateway.message import Defer, Delivery, Message
from gateway.plugin_manager import hookimpl
from gateway.reputation import (
    ESTABLISHED_THRESHOLDS,
    WARMING_THRESHOLDS,
    Health,
    IdentityKind,
    Pause,
    Reputation,
    Thresholds,
    Tier,
)
from gateway.store.base import Store
from gateway.streams import settings_of

NAME = "warming"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.warming]`` exists."""

log = logging.getLogger("gateway.plugins.warming")

PRESETS: dict[str, tuple[tuple[int, int], ...]] = {
    "conservative": ((1, 50), (7, 1_000), (14, 15_000), (21, 100_000)),
    "moderate": ((1, 100), (7, 7_500), (14, 100_000)),
    "aggressive": ((1, 200), (7, 100_000)),
}
"""Anchor days and volumes. Between two anchors the volume grows by the same factor every
day (geometric interpolation), rounded half up: conservative's day 2 is 50 * 20^(1/6) = 82."""

ISPS = ("gmail", "microsoft", "yahoo", "other")
ISP_DOMAINS: dict[str, tuple[str, ...]] = {
    "gmail": ("gmail.com", "googlemail.com"),
    "microsoft": ("outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk"),
    "yahoo": ("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk"),
}
"""Recipient domains of the big mailbox providers; ``isp_domains`` adds more (e.g. a
company on Google Workspace)."""

USAGE_REFRESH_SECONDS = 5.0
ROUTE_RANK = {"EXCELLENT": 0, "GOOD": 1, "NO_DATA": 1, "FAIR": 2, "POOR": 3, "CRITICAL": 4}
"""Routes are tried healthiest first; a route without a dedicated IP ranks as GOOD."""


# --- schedules -------------------------------------------------------------------------------


class ScheduleStep(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    day: int
    volume: int


class Schedule:
    """Daily volumes: anchors, interpolated geometrically between them, rounded half up."""

    def __init__(self, name: str, anchors: tuple[tuple[int, int], ...]) -> None:
        self.name = name
        self.anchors = anchors
        self.days = anchors[-1][0]

    def volume(self, day: int) -> int | None:
        """Messages allowed on warming day ``day`` (1-based); ``None`` once warmed up."""
        if day > self.days:
            return None
        day = max(day, 1)
        for (a, va), (b, vb) in zip(self.anchors, self.anchors[1:], strict=False):
            if day == b:
                return vb
            if a <= day < b:
                # Geometric: the same growth factor every day between two anchors.
                growth: float = (vb / va) ** ((day - a) / (b - a))
                return math.floor(va * growth + 0.5)
        return self.anchors[0][1]  # a one-anchor schedule


def build_schedule(name: str, steps: list[ScheduleStep], where: str) -> Schedule:
    if not steps:
        raise ConfigError(f"{where}: give at least one {{day, volume}} step")
    if steps[0].day != 1:
        raise ConfigError(f"{where}[0].day: a schedule starts on day 1")
    for i, step in enumerate(steps):
        if step.volume < 1:
            raise ConfigError(f"{where}[{i}].volume: must be at least 1")
        if i and step.day <= steps[i - 1].day:
            raise ConfigError(f"{where}[{i}].day: days must increase")
    return Schedule(name, tuple((s.day, s.volume) for s in steps))


# --- settings --------------------------------------------------------------------------------


class PauseSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Thresholds that pause an identity still warming up."""

    bounce_percent: float = WARMING_THRESHOLDS.bounce_percent
    complaint_percent: float = WARMING_THRESHOLDS.complaint_percent
    delivery_percent: float = WARMING_THRESHOLDS.delivery_percent


class HaltSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Thresholds that halt an established identity (0 turns a check off)."""

    bounce_percent: float = ESTABLISHED_THRESHOLDS.bounce_percent
    complaint_percent: float = ESTABLISHED_THRESHOLDS.complaint_percent
    delivery_percent: float = ESTABLISHED_THRESHOLDS.delivery_percent


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timezone: str = "UTC"
    """IANA zone whose midnight starts a new warming day and resets the caps."""
    scale: float = 1.0
    """Multiplies every schedule volume (at least 1 a day), e.g. 0.5 to warm at half pace."""
    per_isp: bool = False
    """Apply each day's cap per destination ISP (gmail, microsoft, yahoo, other) instead of
    once for all mail."""
    isp_domains: dict[str, list[str]] = msgspec.field(default_factory=dict)
    """Extra recipient domains per ISP, e.g. ``{ gmail = ["example-workspace.com"] }``."""
    schedules: dict[str, list[ScheduleStep]] = msgspec.field(default_factory=dict)
    """Custom schedules by name: ``[{ day = 1, volume = 20 }, { day = 10, volume = 5000 }]``."""
    window_days: int = 7
    """Days of events the reputation rates are computed over (today included)."""
    min_sample: int = 100
    """Delivery outcomes needed (since the last resume) before thresholds can pause."""
    pause: PauseSettings = msgspec.field(default_factory=PauseSettings)
    halt: HaltSettings = msgspec.field(default_factory=HaltSettings)
    paused_retry: str = "5m"
    """How often mail of a paused identity is looked at again while it waits."""


def _thresholds(section: PauseSettings | HaltSettings, where: str) -> Thresholds:
    for key in ("bounce_percent", "complaint_percent", "delivery_percent"):
        if not 0 <= getattr(section, key) <= 100:
            raise ConfigError(f"plugins.{NAME}.{where}.{key}: a percentage from 0 to 100")
    return Thresholds(
        bounce_percent=section.bounce_percent,
        complaint_percent=section.complaint_percent,
        delivery_percent=section.delivery_percent,
    )


# --- identities and their state ---------------------------------------------------------------

Phase = Literal["scheduled", "warming", "warmed", "established"]


class IspUsage(msgspec.Struct, kw_only=True, frozen=True):
    cap: int | None
    sent: int


class WarmingStatus(msgspec.Struct, kw_only=True, frozen=True):
    """Where an identity stands in its schedule today."""

    kind: IdentityKind
    name: str
    phase: Phase
    """``scheduled`` (before day 1), ``warming``, ``warmed`` (schedule over) or
    ``established`` (no schedule)."""
    schedule: str = ""
    start: dt.date | None = None
    day: int = 0
    """Warming day today (1-based); 0 before the start."""
    days: int = 0
    """Length of the schedule."""
    cap_today: int | None = None
    """Today's cap (for each ISP with ``per_isp``); ``None`` when nothing is capped."""
    sent_today: int = 0
    deferred_today: int = 0
    """Deliveries held back today by this cap."""
    cap_tomorrow: int | None = None
    resets_at: float = 0.0
    """Next midnight in the warming time zone (epoch seconds)."""
    by_isp: dict[str, IspUsage] = msgspec.field(default_factory=dict)


class IdentitySummary(msgspec.Struct, kw_only=True, frozen=True):
    """One line of ``GET /v1/domains`` and ``gateway domains list``."""

    kind: IdentityKind
    name: str
    phase: Phase
    day: int
    cap_today: int | None
    sent_today: int
    deferred_today: int
    score: int | None
    tier: Tier
    paused: bool
    pause_reason: str = ""


class Identity:
    """One domain or IP: its config, its schedule (if warming) and counter keys."""

    def __init__(
        self,
        kind: IdentityKind,
        name: str,
        section: DomainSection | IpSection | None,
        schedule: Schedule | None,
    ) -> None:
        self.kind = kind
        self.name = name
        self.section = section
        self.schedule = schedule
        self.start = section.warming_start if section is not None else None

    def day(self, today: dt.date) -> int:
        return (today - self.start).days + 1 if self.start is not None else 0

    def phase(self, today: dt.date) -> Phase:
        if self.schedule is None:
            return "established"
        day = self.day(today)
        if day < 1:
            return "scheduled"
        return "warming" if day <= self.schedule.days else "warmed"

    def counter(self, part: str, today: dt.date) -> str:
        return f"warm:{self.kind}:{self.name}:{part}:{today.isoformat()}"


class Warming:
    """The plugin's per-gateway state: ``gateway.plugin_state["warming"]``."""

    def __init__(self, config: Config, settings: Settings, store: Store | None, clock: Any) -> None:
        self.config = config
        self.settings = settings
        self._store = store
        self.clock = clock
        try:
            self.zone = zoneinfo.ZoneInfo(settings.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"plugins.{NAME}.timezone: unknown time zone {settings.timezone!r}"
            ) from None
        if settings.scale <= 0:
            raise ConfigError(f"plugins.{NAME}.scale: must be more than 0")
        self._scale = Fraction(str(settings.scale))
        if settings.window_days < 1:
            raise ConfigError(f"plugins.{NAME}.window_days: must be at least 1")
        if settings.min_sample < 1:
            raise ConfigError(f"plugins.{NAME}.min_sample: must be at least 1")
        try:
            self.paused_retry = parse_duration(settings.paused_retry)
        except ValueError as e:
            raise ConfigError(f"plugins.{NAME}.paused_retry: {e}") from None
        self.pause_thresholds = _thresholds(settings.pause, "pause")
        self.halt_thresholds = _thresholds(settings.halt, "halt")
        self.schedules = {name: Schedule(name, anchors) for name, anchors in PRESETS.items()}
        for name, steps in settings.schedules.items():
            if name in PRESETS:
                raise ConfigError(f"plugins.{NAME}.schedules.{name}: a preset has this name")
            self.schedules[name] = build_schedule(name, steps, f"plugins.{NAME}.schedules.{name}")
        self.isp_of_domain = {d: isp for isp, domains in ISP_DOMAINS.items() for d in domains}
        for isp, domains in settings.isp_domains.items():
            if isp not in ISPS[:-1]:
                raise ConfigError(
                    f"plugins.{NAME}.isp_domains.{isp}: not one of {', '.join(ISPS[:-1])}"
                )
            self.isp_of_domain.update({d.lower(): isp for d in domains})
        self.domains = {
            name: self._identity("domain", name, section)
            for name, section in config.domains.items()
        }
        self.ips = {
            name: self._identity("ip", name, section) for name, section in config.ips.items()
        }
        self.ip_of_route = {section.provider: name for name, section in config.ips.items()}
        self.reputation = Reputation(
            store,  # type: ignore[arg-type]  # set by attach() when built before the store
            clock,
            window_days=settings.window_days,
            min_sample=settings.min_sample,
        )
        self._usage: dict[tuple[IdentityKind, str], tuple[int, int]] = {}
        self._ranks: dict[str, int] = {}
        self._ranked_at = -math.inf
        self._refresher: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the warming plugin has no store yet (gateway not started)")
        return self._store

    def attach(self, store: Store) -> None:
        """Use ``store`` (the gateway builds its store after configuring plugins)."""
        self._store = store
        self.reputation.store = store

    def _identity(
        self, kind: IdentityKind, name: str, section: DomainSection | IpSection
    ) -> Identity:
        schedule = None
        if section.warming_schedule:
            schedule = self.schedules.get(section.warming_schedule)
            if schedule is None:
                table = "domains" if kind == "domain" else "ips"
                raise ConfigError(
                    f'{table}."{name}".warming_schedule: no schedule named '
                    f"{section.warming_schedule!r} (presets: {', '.join(PRESETS)}; or define it "
                    f"in [plugins.{NAME}.schedules])"
                )
        return Identity(kind, name, section, schedule)

    # --- time and caps -------------------------------------------------------------------

    def today(self, now: float | None = None) -> dt.date:
        return dt.datetime.fromtimestamp(self.clock.now() if now is None else now, self.zone).date()

    def midnight(self, day: dt.date) -> float:
        """The first instant of ``day`` in the warming zone."""
        return dt.datetime.combine(day, dt.time(0), self.zone).timestamp()

    def cap(self, identity: Identity, today: dt.date) -> int | None:
        if identity.schedule is None:
            return None
        day = identity.day(today)
        if day < 1:
            return 0
        volume = identity.schedule.volume(day)
        if volume is None:
            return None
        return max(1, math.floor(volume * self._scale + Fraction(1, 2)))

    def isp(self, recipient: str) -> str:
        if not self.settings.per_isp:
            return "all"
        domain = recipient.rpartition("@")[2].lower()
        return self.isp_of_domain.get(domain, "other")

    def domain_identity(self, address_or_domain: str) -> Identity | None:
        """The configured domain a sender belongs to (nearest parent), or an unconfigured
        identity for its own domain; ``None`` for the null sender."""
        domain = address_or_domain.rpartition("@")[2].lower().strip()
        if not domain:
            return None
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            found = self.domains.get(".".join(labels[i:]))
            if found is not None:
                return found
        return Identity("domain", domain, None, None)

    def ip_identity(self, route: str) -> Identity | None:
        name = self.ip_of_route.get(route)
        return self.ips[name] if name is not None else None

    def thresholds(self, identity: Identity) -> Thresholds:
        if identity.phase(self.today()) in ("scheduled", "warming"):
            return self.pause_thresholds
        return self.halt_thresholds

    # --- the permit ----------------------------------------------------------------------

    async def permit(self, message: Message, delivery: Delivery, route: str) -> Defer | None:
        now = self.clock.now()
        identities = [i for i in (self.domain_identity(message.mail_from), self.ip_identity(route))]
        present = [i for i in identities if i is not None]
        for identity in present:
            pause = await self.reputation.pause_of(identity.kind, identity.name)
            if pause is not None:
                return Defer(
                    until=now + self.paused_retry,
                    reason=f"{identity.kind} {identity.name} is paused: {pause.reason}",
                )
        today = self.today(now)
        isp = self.isp(delivery.recipient)
        taken: list[str] = []
        for identity in present:
            cap = self.cap(identity, today)
            if cap is None:
                continue
            if cap == 0:
                start = identity.start
                assert start is not None
                return await self._undo(
                    taken,
                    Defer(
                        until=self.midnight(start),
                        reason=f"warming of {identity.kind} {identity.name} starts on {start}",
                    ),
                )
            key = identity.counter(isp, today)
            expires = self.midnight(today + dt.timedelta(days=2))
            if not await self.store.consume(key, 1, cap, expires_at=expires, now=now):
                await self.store.add_to_counter(
                    identity.counter("deferred", today), 1, expires_at=expires, now=now
                )
                where = f" to {isp}" if isp != "all" else ""
                return await self._undo(
                    taken,
                    Defer(
                        until=self.midnight(today + dt.timedelta(days=1)),
                        reason=f"warming cap of {identity.kind} {identity.name} reached: "
                        f"{cap}{where} on day {identity.day(today)} of "
                        f"{identity.schedule.name if identity.schedule else ''}",
                    ),
                )
            taken.append(key)
            cap_sent = self._usage.get((identity.kind, identity.name), (cap, 0))
            self._usage[(identity.kind, identity.name)] = (cap, cap_sent[1] + 1)
        return None

    async def _undo(self, taken: list[str], deferral: Defer) -> Defer:
        """Give back what was counted against other identities for a delivery not sent."""
        now = self.clock.now()
        for key in taken:
            await self.store.add_to_counter(key, -1, expires_at=now, now=now)
        return deferral

    # --- routes --------------------------------------------------------------------------

    async def modify_routes(self, message: Message, routes: list[str]) -> None:
        domain = self.domain_identity(message.mail_from)
        pool = domain.section.pool if domain is not None and domain.section is not None else ""
        pool = settings_of(self.config, message.tenant, message.stream).pool or pool
        await self.refresh_ranks()
        paused = await self.reputation.paused()
        keep = []
        for route in routes:
            ip = self.ip_identity(route)
            if ip is not None:
                if pool and (ip.section is None or ip.section.pool != pool):
                    continue
                if f"ip:{ip.name}" in paused:
                    continue
            keep.append(route)
        keep.sort(key=lambda r: self._ranks.get(self.ip_of_route.get(r, ""), ROUTE_RANK["GOOD"]))
        routes[:] = keep

    async def refresh_ranks(self, force: bool = False) -> None:
        """Re-read the IPs' health tiers (kept for a second of wall time between reads)."""
        if not force and time.monotonic() - self._ranked_at < 1.0:
            return
        ranks = {}
        for name in self.ips:
            health = await self.reputation.health("ip", name)
            ranks[name] = ROUTE_RANK[health.tier]
        self._ranks, self._ranked_at = ranks, time.monotonic()

    # --- events --------------------------------------------------------------------------

    async def observe(self, event: Event) -> None:
        if self.reputation.metric_of(event) is None:
            return
        sender = event.sending_domain
        if not sender and event.message_id:
            message = await self.store.get_message(event.message_id)
            sender = message.mail_from if message is not None else ""
        found: list[Identity] = []
        domain = self.domain_identity(sender) if sender else None
        if domain is not None:
            found.append(domain)
        ip = self.ip_identity(event.provider) if event.provider else None
        if ip is None and event.source_ip:
            ip = self.ips.get(event.source_ip) or Identity("ip", event.source_ip, None, None)
        if ip is not None:
            found.append(ip)
        changed = await self.reputation.record(event, [(i.kind, i.name) for i in found])
        await self.judge(changed)

    async def judge(self, identities: list[tuple[IdentityKind, str]]) -> None:
        """Pause those of ``identities`` whose counts breach their thresholds."""
        for kind, name in identities:
            identity = (self.domains if kind == "domain" else self.ips).get(name) or Identity(
                kind, name, None, None
            )
            await self.reputation.evaluate(kind, name, self.thresholds(identity))

    # --- the operator's view -------------------------------------------------------------

    def identity(self, name: str) -> Identity | None:
        """A configured domain or IP by name."""
        return self.domains.get(name.lower()) or self.ips.get(name)

    async def lookup(self, name: str) -> Identity | None:
        """A configured identity, or one that only events or a pause know of."""
        found = self.identity(name)
        if found is not None:
            return found
        paused = await self.reputation.paused()
        if f"domain:{name.lower()}" in paused:
            return Identity("domain", name.lower(), None, None)
        if f"ip:{name}" in paused:
            return Identity("ip", name, None, None)
        return None

    async def known(self) -> list[Identity]:
        """Configured domains and IPs, then any other paused identity."""
        found = [*self.domains.values(), *self.ips.values()]
        names = {f"{i.kind}:{i.name}" for i in found}
        for key in sorted(await self.reputation.paused()):
            if key not in names:
                kind, _, name = key.partition(":")
                found.append(Identity(kind, name, None, None))  # type: ignore[arg-type]
        return found

    async def summary(self, identity: Identity) -> IdentitySummary:
        status = await self.status(identity)
        health = await self.reputation.health(identity.kind, identity.name)
        return IdentitySummary(
            kind=identity.kind,
            name=identity.name,
            phase=status.phase,
            day=status.day,
            cap_today=status.cap_today,
            sent_today=status.sent_today,
            deferred_today=status.deferred_today,
            score=health.score,
            tier=health.tier,
            paused=health.paused,
            pause_reason=health.pause_reason,
        )

    async def health(self, identity: Identity) -> Health:
        return await self.reputation.health(identity.kind, identity.name)

    async def resume(self, identity: Identity) -> bool:
        return await self.reputation.resume(identity.kind, identity.name)

    async def status(self, identity: Identity) -> WarmingStatus:
        now = self.clock.now()
        today = self.today(now)
        phase = identity.phase(today)
        schedule = identity.schedule
        isps = ISPS if self.settings.per_isp else ("all",)
        keys = [identity.counter(isp, today) for isp in isps]
        values = await self.store.counters([*keys, identity.counter("deferred", today)], now)
        cap = self.cap(identity, today)
        return WarmingStatus(
            kind=identity.kind,
            name=identity.name,
            phase=phase,
            schedule=schedule.name if schedule else "",
            start=identity.start,
            day=max(0, identity.day(today)) if schedule else 0,
            days=schedule.days if schedule else 0,
            cap_today=cap,
            sent_today=sum(values[k] for k in keys),
            deferred_today=values[identity.counter("deferred", today)],
            cap_tomorrow=self.cap(identity, today + dt.timedelta(days=1)),
            resets_at=self.midnight(today + dt.timedelta(days=1)),
            by_isp={
                isp: IspUsage(cap=cap, sent=values[k]) for isp, k in zip(isps, keys, strict=True)
            }
            if self.settings.per_isp
            else {},
        )

    async def pause_of(self, identity: Identity) -> Pause | None:
        return await self.reputation.pause_of(identity.kind, identity.name)

    # --- metrics -------------------------------------------------------------------------

    def usage_snapshot(self) -> list[tuple[str, str, int, int]]:
        """(kind, name, cap today, sent today) of every identity under a cap today, as last
        read from the store (every few seconds) plus this process's sends since."""
        return [(kind, name, cap, sent) for (kind, name), (cap, sent) in self._usage.items()]

    async def refresh_usage(self) -> None:
        usage: dict[tuple[IdentityKind, str], tuple[int, int]] = {}
        for identity in [*self.domains.values(), *self.ips.values()]:
            if identity.phase(self.today()) not in ("warming", "scheduled"):
                continue
            status = await self.status(identity)
            if status.cap_today is not None:
                usage[(identity.kind, identity.name)] = (status.cap_today, status.sent_today)
        self._usage = usage

    async def start(self) -> None:
        await self.refresh_usage()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="warming-usage")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.reputation.flush()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(USAGE_REFRESH_SECONDS)
            try:
                await self.reputation.flush()
                await self.judge(self.reputation.unjudged())
                await self.refresh_usage()
            except Exception:
                log.exception("reading warming usage failed; will try again")


def build(config: Config, store: Store | None, clock: Any) -> Warming:
    """The plugin's state for ``config`` (also used by the CLI, outside a running gateway)."""
    return Warming(config, plugin_settings(config, NAME, Settings), store, clock)


# --- hooks -----------------------------------------------------------------------------------


@hookimpl
def gateway_configure(gateway: Any, config: Config) -> None:
    gateway.plugin_state[NAME] = build(config, None, gateway.clock)


@hookimpl
async def gateway_startup(gateway: Any) -> None:
    state: Warming = gateway.plugin_state[NAME]
    state.attach(gateway.store)
    await state.start()


@hookimpl
async def gateway_shutdown(gateway: Any) -> None:
    await gateway.plugin_state[NAME].stop()


@hookimpl
async def gateway_modify_routes(gateway: Any, message: Message, routes: list[str]) -> None:
    await gateway.plugin_state[NAME].modify_routes(message, routes)


@hookimpl
async def gateway_permit(
    gateway: Any, message: Message, delivery: Delivery, route: str
) -> Defer | None:
    verdict: Defer | None = await gateway.plugin_state[NAME].permit(message, delivery, route)
    return verdict


@hookimpl
async def gateway_event(gateway: Any, event: Event) -> None:
    await gateway.plugin_state[NAME].observe(event)
