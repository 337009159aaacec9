"""``/v1/stats``: a tenant's deliveries by current status, tag, day and stream, and the opens
and clicks recorded for them by classification; optionally of one stream."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import FromQuery

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.problems import Problem

DEFAULT_PERIOD = 7 * 86400.0


class Stats(msgspec.Struct, kw_only=True):
    since: dt.datetime
    until: dt.datetime
    by_status: dict[str, int]
    """Deliveries (one per recipient) of messages accepted in the period, by current status."""
    by_tag: dict[str, dict[str, int]]
    by_day: dict[str, dict[str, int]]
    """``YYYY-MM-DD`` (UTC) of acceptance → status → deliveries."""
    by_stream: dict[str, dict[str, int]]
    """Message stream → status → deliveries."""
    engagement: dict[str, dict[str, int]]
    """``opened`` / ``clicked`` → classification (``human``, ``machine``, ``scanner``,
    ``proxy:<which>``) → events. Engagement rates count ``human`` (and mailbox proxies' opens)
    only."""


class StatsController(Controller):
    path = "/v1/stats"
    tags = ["stats"]

    @get("/", guards=[requires("read")], summary="Delivery counts by status, tag and day")
    async def show(
        self,
        request: Request[Any, Any, Any],
        since: FromQuery[dt.datetime | None] = None,
        until: FromQuery[dt.datetime | None] = None,
        stream: FromQuery[str | None] = None,
    ) -> Stats:
        api = ApiContext.of(request)
        now = api.clock.now()
        end = _epoch(until, "until") if until is not None else now
        start = _epoch(since, "since") if since is not None else end - DEFAULT_PERIOD
        if start >= end:
            raise Problem(
                400,
                "invalid-parameter",
                "Invalid parameter",
                "since: must be before until",
                field="since",
            )
        # Without an explicit until, "up to now" includes what was accepted this instant.
        upper = end if until is not None else end + 1.0
        found = await api.store.delivery_stats(
            request.state.api_key.tenant, start, upper, stream=stream
        )
        return Stats(
            since=dt.datetime.fromtimestamp(start, dt.UTC),
            until=dt.datetime.fromtimestamp(end, dt.UTC),
            by_status=found.by_status,
            by_tag=found.by_tag,
            by_day=found.by_day,
            by_stream=found.by_stream,
            engagement=found.engagement,
        )


def _epoch(value: dt.datetime, field: str) -> float:
    if value.tzinfo is None:
        raise Problem(
            400,
            "invalid-parameter",
            "Invalid parameter",
            f"{field}: give a time zone, e.g. 2030-01-31T09:00:00Z",
            field=field,
        )
    return value.timestamp()
