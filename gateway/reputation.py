"""Sender reputation: rolling rates per sending domain and IP, a health score, auto-pause.

Counts come from normalized events (:mod:`gateway.events`): the dispatcher's delivered,
deferred and bounced results, and the complaints, bounces, opens and clicks that provider
webhooks and tracking publish. They are kept in the store's shared counters, one per identity,
metric and UTC day, so every worker process sees the same numbers.

**Rates** over the last ``window_days`` days (today included), from these counts:

* ``delivered``, ``bounced`` (permanent), ``deferred`` (a provider's temporary refusal or a
  soft bounce — never the gateway's own holding back by caps, rates or pauses),
  ``complained``, ``engaged`` (a recipient's first open or click of a message that is not
  classified as a machine's: scanner opens, Apple Mail Privacy Protection fetches and
  machine clicks do not count).
* bounce rate = bounced / (delivered + bounced)
* complaint rate = complained / delivered
* delivery rate = delivered / (delivered + bounced + deferred)
* engagement rate = engaged / delivered

Each delivery counts once, in the rate of its final fate: ``delivered`` is counted once per
delivery however many reports say so, and a hard bounce that arrives after ``delivered`` (an
ESP's bounce webhook, a late DSN) takes the delivery out of ``delivered`` as it adds it to
``bounced``.

**Health score** 0-100: each rate maps to a 0-100 sub-score, linearly and clamped —

* bounce: 100 at 0 %, 0 at 10 % or more: ``100 * (1 - rate / 0.10)``
* complaint: 100 at 0 %, 0 at 0.5 % or more: ``100 * (1 - rate / 0.005)``
* delivery: 100 at 100 %, 0 at 80 % or less: ``100 * (rate - 0.80) / 0.20``
* engagement: 0 at 0 %, 100 at 20 % or more: ``100 * rate / 0.20``

— and the score is their weighted mean (bounce 35 %, complaint 35 %, delivery 15 %,
engagement 15 %), rounded half up to an integer. A sub-score whose rate has no denominator yet
is left out and the other weights are scaled up; engagement is left out until an open or click
has been recorded for the identity. No data at all: no score (``NO_DATA``).
Tiers: EXCELLENT ≥ 90, GOOD 70-89, FAIR 50-69, POOR 30-49, CRITICAL < 30.

**Auto-pause**: once an identity has ``min_sample`` outcomes (delivered + bounced + deferred)
since it was last resumed, a rate past its threshold pauses it — warming identities with the
``pause`` thresholds, established ones with the ``halt`` thresholds. A pause is a flag in the
store: it survives restarts and recovering rates, and only :meth:`Reputation.resume` (the
operator) lifts it. Thresholds are judged on counts since the last resume, so a resumed
identity starts with a clean slate instead of pausing again on the same old bounces.
"""

from __future__ import annotations

import json
import logging
import math
import time
from fractions import Fraction
from typing import Literal

import msgspec

from gateway.clock import Clock
from gateway.events import Event
from gateway.store.base import Store

log = logging.getLogger("gateway.reputation")

DAY = 86400.0
IdentityKind = Literal["domain", "ip"]
Tier = Literal["EXCELLENT", "GOOD", "FAIR", "POOR", "CRITICAL", "NO_DATA"]
METRICS = ("delivered", "bounced", "deferred", "complained", "engaged")
FLUSH_SECONDS = 1.0
"""How long ``delivered`` counts, the frequent kind, may stay in memory before they are
written; every read flushes them first, so only other processes see them late."""

WEIGHTS = {"bounce": 35, "complaint": 35, "delivery": 15, "engagement": 15}
TIERS: tuple[tuple[int, Tier], ...] = (
    (90, "EXCELLENT"),
    (70, "GOOD"),
    (50, "FAIR"),
    (30, "POOR"),
    (0, "CRITICAL"),
)
CACHE_SECONDS = 1.0
"""How long pauses and resume epochs read from the store are trusted (wall-clock): another
process's pause or an operator's resume from the CLI is seen within this time."""


class Counts(msgspec.Struct, kw_only=True, frozen=True):
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    complained: int = 0
    engaged: int = 0

    @property
    def sample(self) -> int:
        """Delivery outcomes, the base of the auto-pause ``min_sample``."""
        return self.delivered + self.bounced + self.deferred


class Rates(msgspec.Struct, kw_only=True, frozen=True):
    """Exact rates (``None`` without a denominator)."""

    bounce: Fraction | None
    complaint: Fraction | None
    delivery: Fraction | None
    engagement: Fraction | None


def _ratio(numerator: int, denominator: int) -> Fraction | None:
    return Fraction(numerator, denominator) if denominator else None


def rates(counts: Counts) -> Rates:
    c = counts
    return Rates(
        bounce=_ratio(c.bounced, c.delivered + c.bounced),
        complaint=_ratio(c.complained, c.delivered),
        delivery=_ratio(c.delivered, c.delivered + c.bounced + c.deferred),
        engagement=_ratio(c.engaged, c.delivered),
    )


def _clamp(value: Fraction) -> Fraction:
    return min(Fraction(1), max(Fraction(0), value))


def sub_scores(r: Rates, *, engagement: bool) -> dict[str, Fraction]:
    """The 0-100 sub-score of each rate that has data (see the module docstring)."""
    out: dict[str, Fraction] = {}
    if r.bounce is not None:
        out["bounce"] = 100 * _clamp(1 - r.bounce / Fraction(10, 100))
    if r.complaint is not None:
        out["complaint"] = 100 * _clamp(1 - r.complaint / Fraction(5, 1000))
    if r.delivery is not None:
        out["delivery"] = 100 * _clamp((r.delivery - Fraction(80, 100)) / Fraction(20, 100))
    if engagement and r.engagement is not None:
        out["engagement"] = 100 * _clamp(r.engagement / Fraction(20, 100))
    return out


def health_score(r: Rates, *, engagement: bool) -> int | None:
    """Weighted mean of the sub-scores with data, rounded half up; ``None`` without data."""
    scores = sub_scores(r, engagement=engagement)
    if not scores:
        return None
    total = sum(WEIGHTS[name] for name in scores)
    mean = sum(WEIGHTS[name] * score for name, score in scores.items()) / total
    return math.floor(mean + Fraction(1, 2))


def tier(score: int | None) -> Tier:
    if score is None:
        return "NO_DATA"
    return next(name for floor, name in TIERS if score >= floor)


class Thresholds(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Rates (in percent) that pause an identity; 0 turns a check off."""

    bounce_percent: float
    """Pause when the bounce rate is above this."""
    complaint_percent: float
    """Pause when the complaint rate is above this."""
    delivery_percent: float
    """Pause when the delivery rate is below this."""


WARMING_THRESHOLDS = Thresholds(bounce_percent=5.0, complaint_percent=0.1, delivery_percent=90.0)
ESTABLISHED_THRESHOLDS = Thresholds(bounce_percent=2.0, complaint_percent=0.1, delivery_percent=0)


def _percent(value: Fraction) -> str:
    return f"{float(value * 100):.2f}%"


def breach(counts: Counts, thresholds: Thresholds, min_sample: int) -> str | None:
    """Why ``counts`` should pause an identity, or ``None``."""
    if counts.sample < min_sample:
        return None
    r = rates(counts)
    limit = thresholds
    if (
        limit.bounce_percent
        and r.bounce is not None
        and r.bounce * 100 > _exact(limit.bounce_percent)
    ):
        return f"bounce rate {_percent(r.bounce)} above {limit.bounce_percent:g}%"
    if (
        limit.complaint_percent
        and r.complaint is not None
        and r.complaint * 100 > _exact(limit.complaint_percent)
    ):
        return f"complaint rate {_percent(r.complaint)} above {limit.complaint_percent:g}%"
    if (
        limit.delivery_percent
        and r.delivery is not None
        and r.delivery * 100 < _exact(limit.delivery_percent)
    ):
        return f"delivery rate {_percent(r.delivery)} below {limit.delivery_percent:g}%"
    return None


def _exact(percent: float) -> Fraction:
    # 0.1 as written in the config, not the binary float nearest to it.
    return Fraction(str(percent))


class Pause(msgspec.Struct, kw_only=True, frozen=True):
    """A paused identity: held back until an operator resumes it."""

    reason: str
    at: float


class Health(msgspec.Struct, kw_only=True, frozen=True):
    """An identity's reputation as the operator sees it."""

    kind: IdentityKind
    name: str
    window_days: int
    counts: Counts
    bounce_rate: float | None
    complaint_rate: float | None
    delivery_rate: float | None
    engagement_rate: float | None
    score: int | None
    tier: Tier
    paused: bool
    pause_reason: str = ""
    paused_at: float | None = None


def _key(kind: IdentityKind, name: str) -> str:
    return f"{kind}:{name}"


class Reputation:
    """Counts events per identity, scores identities, pauses and resumes them."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        window_days: int = 7,
        min_sample: int = 100,
        engagement_measured: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.window_days = window_days
        self.min_sample = min_sample
        self.engagement_measured = engagement_measured
        self._pauses: dict[str, Pause] = {}
        self._epochs: dict[str, str] = {}
        self._cached_at = -math.inf
        self._buffered: dict[str, tuple[int, float]] = {}
        """Counter key → (deliveries not yet written, expiry): one store write per key and
        flush instead of two per delivery."""
        self._buffered_since = math.inf
        self._unjudged: set[tuple[IdentityKind, str]] = set()

    # --- counting ------------------------------------------------------------------------

    @staticmethod
    def metric_of(event: Event) -> str | None:
        """Which count an event adds to, or ``None`` for events that say nothing about
        reputation (the gateway's own deferrals carry no provider)."""
        if event.type == "delivered":
            return "delivered"
        if event.type == "bounced":
            return "deferred" if event.bounce == "soft" else "bounced"
        if event.type == "deferred":
            return "deferred" if event.provider else None
        if event.type == "complained":
            return "complained"
        if event.type in ("opened", "clicked"):
            return None if event.by_machine else "engaged"
        return None

    async def record(
        self, event: Event, identities: list[tuple[IdentityKind, str]]
    ) -> list[tuple[IdentityKind, str]]:
        """Count ``event`` for each identity; return the identities whose counts changed."""
        metric = self.metric_of(event)
        if metric is None or not identities:
            return []
        now = self.clock.now()
        horizon = now + (self.window_days + 1) * DAY
        if event.event_id and not await self.store.first_sighting(
            f"rep:seen:{event.event_id}", expires_at=horizon, now=now
        ):
            return []  # a provider re-sending the same event
        if metric == "engaged":
            first = await self.store.first_sighting(
                f"rep:engaged:{event.message_id}:{event.recipient.lower()}",
                expires_at=horizon,
                now=now,
            )
            if not event.message_id or not first:
                return []
        fate = f"{event.message_id}:{event.recipient.lower()}" if event.message_id else ""
        if fate and metric in ("delivered", "bounced"):
            # Each delivery counts once, in the rate of its final fate: a second report of
            # the same fate (the dispatcher's hand-over, then the provider's webhook) is not
            # counted again, and a hard bounce after "delivered" moves it from one to the other.
            if not await self.store.first_sighting(
                f"rep:fate:{metric}:{fate}", expires_at=horizon, now=now
            ):
                return []
            if metric == "bounced":
                await self._undo_delivered(fate, identities, now)
        day = int(now // DAY)
        await self._refresh()
        buffered = metric == "delivered"
        if buffered and fate:
            self._buffered[f"rep:fate:at:{fate}"] = (int(now), horizon)
        for kind, name in identities:
            epoch = self._epochs.get(_key(kind, name), "0")
            for key in (
                f"rep:{kind}:{name}:{metric}:{day}",
                f"rep:{kind}:{name}:e{epoch}:{metric}:{day}",
            ):
                if buffered:
                    self._buffered[key] = (self._buffered.get(key, (0, 0.0))[0] + 1, horizon)
                else:
                    await self.store.add_to_counter(key, 1, expires_at=horizon, now=now)
        if not buffered:
            return identities
        self._unjudged.update(identities)
        started = self._buffered_since = min(self._buffered_since, time.monotonic())
        if time.monotonic() - started < FLUSH_SECONDS:
            # Judged after the next flush: a delivery only improves the rates, but it may
            # bring the sample up to min_sample while they are bad.
            return []
        await self.flush()
        return self.unjudged()

    async def _undo_delivered(
        self, fate: str, identities: list[tuple[IdentityKind, str]], now: float
    ) -> None:
        """Take back the ``delivered`` count of a delivery that bounced after all."""
        await self.flush()
        key = f"rep:fate:at:{fate}"
        delivered_at = await self.store.counter(key, now)
        if delivered_at <= 0:
            return
        await self.store.add_to_counter(key, -delivered_at, expires_at=now + DAY, now=now)
        day = int(delivered_at // DAY)
        await self._refresh()
        expires_at = now + (self.window_days + 1) * DAY
        for kind, name in identities:
            keys = [f"rep:{kind}:{name}:delivered:{day}"]
            epoch = self._epochs.get(_key(kind, name), "0")
            if delivered_at * 1000 >= int(epoch):  # counted since the last resume too
                keys.append(f"rep:{kind}:{name}:e{epoch}:delivered:{day}")
            for counter_key in keys:
                await self.store.add_to_counter(counter_key, -1, expires_at=expires_at, now=now)

    def unjudged(self) -> list[tuple[IdentityKind, str]]:
        """Identities whose delivered counts were buffered since they were last handed out
        here: to be judged against thresholds once flushed."""
        found, self._unjudged = sorted(self._unjudged), set()
        return found

    async def flush(self) -> None:
        """Write the buffered ``delivered`` counts to the store (before any read, at least
        every ``FLUSH_SECONDS`` while deliveries flow, and at shutdown)."""
        pending, self._buffered = self._buffered, {}
        self._buffered_since = math.inf
        now = self.clock.now()
        for key, (amount, expires_at) in pending.items():
            await self.store.add_to_counter(key, amount, expires_at=expires_at, now=now)

    async def counts(self, kind: IdentityKind, name: str, *, since_resume: bool = False) -> Counts:
        """Totals over the window (today and the ``window_days - 1`` days before)."""
        await self.flush()
        now = self.clock.now()
        today = int(now // DAY)
        prefix = f"rep:{kind}:{name}:"
        if since_resume:
            await self._refresh()
            prefix += f"e{self._epochs.get(_key(kind, name), '0')}:"
        keys = {
            (metric, day): f"{prefix}{metric}:{day}"
            for metric in METRICS
            for day in range(today - self.window_days + 1, today + 1)
        }
        values = await self.store.counters(list(keys.values()), now)
        totals = dict.fromkeys(METRICS, 0)
        for (metric, _), key in keys.items():
            totals[metric] += values.get(key, 0)
        return Counts(**totals)

    async def health(self, kind: IdentityKind, name: str) -> Health:
        counts = await self.counts(kind, name)
        r = rates(counts)
        engagement = self.engagement_measured or counts.engaged > 0
        score = health_score(r, engagement=engagement)
        pause = await self.pause_of(kind, name)
        return Health(
            kind=kind,
            name=name,
            window_days=self.window_days,
            counts=counts,
            bounce_rate=_float(r.bounce),
            complaint_rate=_float(r.complaint),
            delivery_rate=_float(r.delivery),
            engagement_rate=_float(r.engagement) if engagement else None,
            score=score,
            tier=tier(score),
            paused=pause is not None,
            pause_reason=pause.reason if pause else "",
            paused_at=pause.at if pause else None,
        )

    # --- pausing ---------------------------------------------------------------------------

    async def evaluate(self, kind: IdentityKind, name: str, thresholds: Thresholds) -> Pause | None:
        """Pause the identity if its counts since the last resume breach ``thresholds``;
        return its pause (new or standing), or ``None``."""
        standing = await self.pause_of(kind, name)
        if standing is not None:
            return standing
        counts = await self.counts(kind, name, since_resume=True)
        reason = breach(counts, thresholds, self.min_sample)
        if reason is None:
            return None
        reason = f"{reason} over {counts.sample} deliveries"
        return await self.pause(kind, name, reason)

    async def pause(self, kind: IdentityKind, name: str, reason: str) -> Pause:
        pause = Pause(reason=reason, at=self.clock.now())
        await self.store.set_flag(
            f"pause:{_key(kind, name)}", json.dumps({"reason": pause.reason, "at": pause.at})
        )
        self._pauses[_key(kind, name)] = pause
        log.warning("%s %s paused: %s", kind, name, reason)
        return pause

    async def resume(self, kind: IdentityKind, name: str) -> bool:
        """Lift a pause (the operator's call); whether there was one. Thresholds are judged
        afresh from here on."""
        key = _key(kind, name)
        epoch = str(int(self.clock.now() * 1000))
        await self.store.set_flag(f"epoch:{key}", epoch)
        self._epochs[key] = epoch
        was_paused = await self.store.clear_flag(f"pause:{key}")
        self._pauses.pop(key, None)
        if was_paused:
            log.warning("%s %s resumed by the operator", kind, name)
        return was_paused

    async def pause_of(self, kind: IdentityKind, name: str) -> Pause | None:
        await self._refresh()
        return self._pauses.get(_key(kind, name))

    async def paused(self) -> dict[str, Pause]:
        """Every paused identity, by ``kind:name``."""
        await self._refresh()
        return dict(self._pauses)

    async def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._cached_at < CACHE_SECONDS:
            return
        pauses: dict[str, Pause] = {}
        for key, value in (await self.store.flags("pause:")).items():
            data = json.loads(value)
            pauses[key.removeprefix("pause:")] = Pause(reason=data["reason"], at=data["at"])
        epochs = {
            k.removeprefix("epoch:"): v for k, v in (await self.store.flags("epoch:")).items()
        }
        self._pauses, self._epochs = pauses, epochs
        self._cached_at = time.monotonic()


def _float(value: Fraction | None) -> float | None:
    return None if value is None else float(value)
