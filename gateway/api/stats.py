"""``/v1/stats``: a tenant's deliveries by current status, tag, day and stream, and the opens
and clicks recorded for them by classification; optionally of one stream."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.problems import query_time

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
        since: Annotated[str | None, QueryParameter(format="date-time")] = None,
        until: Annotated[str | None, QueryParameter(format="date-time")] = None,
        stream: FromQuery[str | None] = None,
    ) -> Stats:
        """A window with ``since`` at or after ``until`` is empty: every count is zero."""
        api = ApiContext.of(request)
        now = api.clock.now()
        given_end, given_start = query_time(until, "until"), query_time(since, "since")
        end = now if given_end is None else given_end
        start = end - DEFAULT_PERIOD if given_start is None else given_start
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
