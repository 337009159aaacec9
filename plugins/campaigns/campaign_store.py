"""``CampaignStore``: campaigns, runs and send rows in SQL, per tenant.

The fan-out's guarantees live here:

* a run is claimed with a **lease** (``lease_owner``/``lease_until`` set by one conditional
  UPDATE), so two workers or nodes never fan out the same run; every page write is made only
  while the lease is still ours;
* a page is **one transaction**: its send rows (unique per campaign, run and contact, so a
  repeated page inserts nothing twice) and the run's cursor move together;
* a send row is written ``planned`` *before* its delivery is spooled and becomes ``queued``
  with the message id after; a run resumed after a crash first spools the ``planned`` rows
  again, idempotently (keyed by the send id), so nothing is lost or doubled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience.store import NotFound
from gateway_plugins.campaigns import schema
from gateway_plugins.campaigns.campaign_model import (
    FINAL_SENDS,
    TRANSITIONS,
    Campaign,
    CampaignStatus,
    Run,
    Send,
    StateError,
    Window,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.clock import Clock


class LeaseLost(Exception):
    """Another worker took the run over (our lease ran out): stop fanning it out."""


class NewSend(msgspec.Struct, kw_only=True):
    """A send row to write: ``planned`` (with its ``not_before``) or ``skipped`` with a reason."""

    contact_id: int
    email: str
    status: str
    reason: str = ""
    not_before: float | None = None
    variant: str = ""
    list_id: int | None = None


OPEN_SENDS = ("planned", "queued")


class CampaignStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # --- campaigns ------------------------------------------------------------------------------

    async def create(self, tenant: str, **fields: Any) -> Campaign:
        now = self.clock.now()
        values = _encoded({**fields, "tenant": tenant, "status": "draft"})
        async with self.engine.begin() as conn:
            campaign_id = (
                await conn.execute(
                    sa.insert(schema.campaigns)
                    .values(**values, created_at=now, updated_at=now)
                    .returning(schema.campaigns.c.id)
                )
            ).scalar_one()
            return await self._campaign(conn, tenant, campaign_id)

    async def update(self, tenant: str, campaign_id: int, **fields: Any) -> Campaign:
        """Change a draft (or a scheduled campaign's settings before it starts)."""
        table = schema.campaigns
        async with self.engine.begin() as conn:
            current = await self._campaign(conn, tenant, campaign_id)
            if current.status != "draft":
                raise StateError("change", current.status)
            await conn.execute(
                sa.update(table)
                .where(table.c.id == campaign_id)
                .values(**_encoded(fields), updated_at=self.clock.now())
            )
            return await self._campaign(conn, tenant, campaign_id)

    async def get(self, tenant: str, campaign_id: int) -> Campaign:
        async with self.engine.connect() as conn:
            return await self._campaign(conn, tenant, campaign_id)

    async def list_campaigns(
        self, tenant: str, *, after: int = 0, limit: int = 100
    ) -> list[Campaign]:
        table = schema.campaigns
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(table)
                .where(table.c.tenant == tenant, table.c.id > after)
                .order_by(table.c.id)
                .limit(limit)
            )
            return [_campaign(r) for r in rows.mappings()]

    async def schedule(
        self, tenant: str, campaign_id: int, due_at: float, template_version: int
    ) -> tuple[Campaign, Run]:
        """``draft`` → ``scheduled`` with its first run due at ``due_at``."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await self._move(conn, tenant, campaign_id, "schedule", "scheduled", now)
            await conn.execute(
                sa.update(schema.campaigns)
                .where(schema.campaigns.c.id == campaign_id)
                .values(scheduled_at=due_at)
            )
            run = await self._add_run(conn, tenant, campaign_id, 1, due_at, template_version)
            return await self._campaign(conn, tenant, campaign_id), run

    async def add_run(
        self, tenant: str, campaign_id: int, number: int, due_at: float, template_version: int
    ) -> Run | None:
        """The run ``number`` (a recurrence); ``None`` if it exists already."""
        async with self.engine.begin() as conn:
            existing = await conn.scalar(
                sa.select(schema.runs.c.id).where(
                    schema.runs.c.campaign_id == campaign_id, schema.runs.c.number == number
                )
            )
            if existing is not None:
                return None
            return await self._add_run(conn, tenant, campaign_id, number, due_at, template_version)

    async def pause(self, tenant: str, campaign_id: int) -> Campaign:
        async with self.engine.begin() as conn:
            await self._move(conn, tenant, campaign_id, "pause", "paused", self.clock.now())
            return await self._campaign(conn, tenant, campaign_id)

    async def resume(self, tenant: str, campaign_id: int) -> Campaign:
        """``paused`` → ``sending`` if a run has started, else ``scheduled``."""
        async with self.engine.begin() as conn:
            started = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(schema.runs)
                .where(
                    schema.runs.c.campaign_id == campaign_id, schema.runs.c.started_at.is_not(None)
                )
            )
            target: CampaignStatus = "sending" if started else "scheduled"
            await self._move(conn, tenant, campaign_id, "resume", target, self.clock.now())
            return await self._campaign(conn, tenant, campaign_id)

    async def cancel(self, tenant: str, campaign_id: int) -> tuple[Campaign, int]:
        """Cancel; every send not yet final ends ``cancelled`` (deliveries still queued are
        skipped by the consent check at delivery time). Returns the count cancelled."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await self._move(conn, tenant, campaign_id, "cancel", "cancelled", now)
            s = schema.sends
            result = await conn.execute(
                sa.update(s)
                .where(s.c.campaign_id == campaign_id, s.c.status.in_(OPEN_SENDS))
                .values(status="cancelled", reason="campaign cancelled", updated_at=now)
            )
            r = schema.runs
            await conn.execute(
                sa.update(r)
                .where(r.c.campaign_id == campaign_id, r.c.status != "done")
                .values(status="cancelled", finished_at=now)
            )
            return await self._campaign(conn, tenant, campaign_id), result.rowcount

    async def _move(
        self,
        conn: AsyncConnection,
        tenant: str,
        campaign_id: int,
        action: str,
        target: CampaignStatus,
        now: float,
    ) -> None:
        table = schema.campaigns
        allowed = TRANSITIONS[action]
        result = await conn.execute(
            sa.update(table)
            .where(
                table.c.tenant == tenant,
                table.c.id == campaign_id,
                table.c.status.in_(sorted(allowed)),
            )
            .values(status=target, updated_at=now)
        )
        if result.rowcount == 0:
            current = await self._campaign(conn, tenant, campaign_id)
            raise StateError(action, current.status)

    async def _campaign(self, conn: AsyncConnection, tenant: str, campaign_id: int) -> Campaign:
        table = schema.campaigns
        row = (
            (
                await conn.execute(
                    sa.select(table).where(table.c.tenant == tenant, table.c.id == campaign_id)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound("campaign", campaign_id)
        return _campaign(row)

    # --- runs and leases ------------------------------------------------------------------------

    async def _add_run(
        self,
        conn: AsyncConnection,
        tenant: str,
        campaign_id: int,
        number: int,
        due_at: float,
        template_version: int,
    ) -> Run:
        run_id = (
            await conn.execute(
                sa.insert(schema.runs)
                .values(
                    tenant=tenant,
                    campaign_id=campaign_id,
                    number=number,
                    status="due",
                    due_at=due_at,
                    template_version=template_version,
                )
                .returning(schema.runs.c.id)
            )
        ).scalar_one()
        return await self._run(conn, run_id)

    async def runs(self, tenant: str, campaign_id: int) -> list[Run]:
        r = schema.runs
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(r)
                .where(r.c.tenant == tenant, r.c.campaign_id == campaign_id)
                .order_by(r.c.number)
            )
            return [_run(x) for x in rows.mappings()]

    async def claim_run(self, owner: str, lease: float) -> tuple[Campaign, Run] | None:
        """A due run of a campaign that is scheduled or sending, whose lease is free, now
        leased to ``owner`` until ``lease`` seconds from now; ``None`` if there is none."""
        now = self.clock.now()
        r, c = schema.runs, schema.campaigns
        async with self.engine.begin() as conn:
            candidates = (
                await conn.execute(
                    sa.select(r.c.id, r.c.tenant, r.c.campaign_id)
                    .join(c, c.c.id == r.c.campaign_id)
                    .where(
                        r.c.status.in_(("due", "fanning_out")),
                        r.c.due_at <= now,
                        r.c.lease_until < now,
                        c.c.status.in_(("scheduled", "sending")),
                    )
                    .order_by(r.c.due_at)
                    .limit(5)
                )
            ).all()
            for run_id, tenant, campaign_id in candidates:
                taken = await conn.execute(
                    sa.update(r)
                    .where(r.c.id == run_id, r.c.lease_until < now)
                    .values(
                        lease_owner=owner,
                        lease_until=now + lease,
                        status="fanning_out",
                        started_at=sa.func.coalesce(r.c.started_at, now),
                    )
                )
                if taken.rowcount == 1:
                    await conn.execute(
                        sa.update(c)
                        .where(c.c.id == campaign_id, c.c.status == "scheduled")
                        .values(status="sending", updated_at=now)
                    )
                    return await self._campaign(conn, tenant, campaign_id), await self._run(
                        conn, run_id
                    )
        return None

    async def renew(self, run: Run, owner: str, lease: float) -> None:
        """Extend our lease; :class:`LeaseLost` if it is no longer ours."""
        async with self.engine.begin() as conn:
            await self._renew(conn, run.id, owner, lease)

    async def _renew(self, conn: AsyncConnection, run_id: int, owner: str, lease: float) -> None:
        r = schema.runs
        now = self.clock.now()
        result = await conn.execute(
            sa.update(r)
            .where(r.c.id == run_id, r.c.lease_owner == owner, r.c.lease_until >= now)
            .values(lease_until=now + lease)
        )
        if result.rowcount != 1:
            raise LeaseLost(f"run {run_id}")

    async def release(self, run: Run, owner: str) -> None:
        r = schema.runs
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(r).where(r.c.id == run.id, r.c.lease_owner == owner).values(lease_until=0)
            )

    async def write_page(
        self, run: Run, owner: str, lease: float, rows: Sequence[NewSend], cursor: int
    ) -> int:
        """One page in one transaction: its send rows (a row already written stays as it
        was) and the run's cursor; renews the lease. Returns how many rows are new."""
        now = self.clock.now()
        s, r = schema.sends, schema.runs
        planned = sum(1 for x in rows if x.status == "planned")
        async with self.engine.begin() as conn:
            await self._renew(conn, run.id, owner, lease)
            inserted = 0
            if rows:
                result = await conn.execute(
                    self._insert(s)
                    .values(
                        [
                            {
                                "tenant": run.tenant,
                                "campaign_id": run.campaign_id,
                                "run_id": run.id,
                                "contact_id": x.contact_id,
                                "email": x.email,
                                "status": x.status,
                                "reason": x.reason,
                                "not_before": x.not_before,
                                "variant": x.variant,
                                "list_id": x.list_id,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for x in rows
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["campaign_id", "run_id", "contact_id"])
                )
                inserted = result.rowcount
            await conn.execute(
                sa.update(r)
                .where(r.c.id == run.id)
                .values(cursor=cursor, planned=r.c.planned + planned)
            )
        run.cursor = cursor
        run.planned += planned
        return inserted

    async def planned_sends(self, run: Run, after: int, limit: int) -> list[Send]:
        """The run's ``planned`` sends after send id ``after`` (their deliveries may or may not
        be in the spool yet)."""
        s = schema.sends
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(s)
                .where(s.c.run_id == run.id, s.c.status == "planned", s.c.id > after)
                .order_by(s.c.id)
                .limit(limit)
            )
            return [_send(x) for x in rows.mappings()]

    async def mark_sends(self, outcomes: Sequence[tuple[int, str, str, str]]) -> None:
        """``(send id, status, reason, message id)`` for sends still ``planned``."""
        if not outcomes:
            return
        s = schema.sends
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(s)
                .where(s.c.id == sa.bindparam("send_id"), s.c.status == "planned")
                .values(
                    status=sa.bindparam("new_status"),
                    reason=sa.bindparam("new_reason"),
                    message_id=sa.bindparam("new_message_id"),
                    updated_at=now,
                ),
                [
                    {
                        "send_id": i,
                        "new_status": status,
                        "new_reason": reason,
                        "new_message_id": message_id,
                    }
                    for i, status, reason, message_id in outcomes
                ],
            )

    async def finish_fanout(self, run: Run, owner: str) -> None:
        now = self.clock.now()
        r = schema.runs
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(r)
                .where(r.c.id == run.id, r.c.lease_owner == owner, r.c.status == "fanning_out")
                .values(status="fanned_out", fanned_out_at=now, lease_until=0)
            )

    async def settle(self) -> list[int]:
        """Runs fanned out whose sends are all final become ``done``; a campaign whose runs
        are all done (and that has no run to come) becomes ``sent``. Returns those campaigns."""
        now = self.clock.now()
        r, s, c = schema.runs, schema.sends, schema.campaigns
        finished: list[int] = []
        async with self.engine.begin() as conn:
            open_sends = (
                sa.select(sa.literal(1))
                .where(s.c.run_id == r.c.id, s.c.status.in_(OPEN_SENDS))
                .exists()
            )
            await conn.execute(
                sa.update(r)
                .where(r.c.status == "fanned_out", ~open_sends)
                .values(status="done", finished_at=now)
            )
            unfinished = (
                sa.select(sa.literal(1))
                .where(r.c.campaign_id == c.c.id, r.c.status != "done")
                .exists()
            )
            candidates = (
                (await conn.execute(sa.select(c.c.id).where(c.c.status == "sending", ~unfinished)))
                .scalars()
                .all()
            )
            for campaign_id in candidates:
                if await self._has_future_runs(conn, campaign_id):
                    continue
                await conn.execute(
                    sa.update(c)
                    .where(c.c.id == campaign_id, c.c.status == "sending")
                    .values(status="sent", updated_at=now)
                )
                finished.append(campaign_id)
        return finished

    async def stale_queued(self, before: float, limit: int) -> list[tuple[int, str, str]]:
        """``(send id, tenant, message id)`` of sends of fanned-out runs still ``queued`` and
        unchanged since ``before``."""
        r, s = schema.runs, schema.sends
        out: list[tuple[int, str, str]] = []
        async with self.engine.connect() as conn:
            run_ids = (
                (await conn.execute(sa.select(r.c.id).where(r.c.status == "fanned_out")))
                .scalars()
                .all()
            )
            for run_id in run_ids:
                rows = await conn.execute(
                    sa.select(s.c.id, s.c.tenant, s.c.message_id)
                    .where(s.c.run_id == run_id, s.c.status == "queued", s.c.updated_at < before)
                    .order_by(s.c.id)
                    .limit(limit - len(out))
                )
                out += [(int(i), str(t), str(m)) for i, t, m in rows]
                if len(out) >= limit:
                    break
        return out

    async def touch(self, send_ids: Sequence[int]) -> None:
        """Checked against the spool and still waiting: look again after ``reconcile_after``."""
        if not send_ids:
            return
        s = schema.sends
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(s)
                .where(s.c.id.in_(list(send_ids)), s.c.status == "queued")
                .values(updated_at=self.clock.now())
            )

    async def _has_future_runs(self, conn: AsyncConnection, campaign_id: int) -> bool:
        """Recurring campaigns keep ``sending`` between runs (overridden by recurrence)."""
        return False

    async def _run(self, conn: AsyncConnection, run_id: int) -> Run:
        row = (
            (await conn.execute(sa.select(schema.runs).where(schema.runs.c.id == run_id)))
            .mappings()
            .one()
        )
        return _run(row)

    # --- sends and what became of them ----------------------------------------------------------

    async def send_for_delivery(self, send_id: int) -> tuple[Send, Campaign] | None:
        s = schema.sends
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(s).where(s.c.id == send_id))).mappings().first()
            if row is None:
                return None
            send = _send(row)
            return send, await self._campaign(conn, send.tenant, send.campaign_id)

    async def record_outcome(self, send_id: int, status: str, reason: str = "") -> bool:
        """What the delivery became; a send already final keeps its first final state, except
        that a delivery that did happen replaces ``cancelled``. True if it changed."""
        s = schema.sends
        replaceable = ("planned", "queued", "cancelled") if status == "delivered" else OPEN_SENDS
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(s)
                .where(s.c.id == send_id, s.c.status.in_(replaceable))
                .values(status=status, reason=reason, updated_at=self.clock.now())
            )
            return bool(result.rowcount)

    async def send_counts(self, tenant: str, campaign_id: int) -> dict[str, dict[str, int]]:
        """Per run number: sends by status, and skips by reason (``skipped:<reason>``)."""
        s, r = schema.sends, schema.runs
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(r.c.number, s.c.status, s.c.reason, sa.func.count())
                .join(r, r.c.id == s.c.run_id)
                .where(s.c.tenant == tenant, s.c.campaign_id == campaign_id)
                .group_by(r.c.number, s.c.status, s.c.reason)
            )
            out: dict[str, dict[str, int]] = {}
            for number, status, reason, count in rows:
                counts = out.setdefault(str(number), {})
                counts[status] = counts.get(status, 0) + count
                if status == "skipped":
                    key = f"skipped:{reason}"
                    counts[key] = counts.get(key, 0) + count
            return out

    async def sends(
        self, tenant: str, campaign_id: int, *, after: int = 0, limit: int = 1000
    ) -> list[Send]:
        s = schema.sends
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(s)
                .where(s.c.tenant == tenant, s.c.campaign_id == campaign_id, s.c.id > after)
                .order_by(s.c.id)
                .limit(limit)
            )
            return [_send(x) for x in rows.mappings()]


def is_final(status: str) -> bool:
    return status in FINAL_SENDS


def _encoded(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if isinstance(out.get("window"), Window):
        out["window"] = msgspec.to_builtins(out["window"])
    return out


def _campaign(row: Any) -> Campaign:
    window = row["window"]
    return Campaign(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        status=row["status"],
        template_id=row["template_id"],
        template_version=row["template_version"],
        variables=row["variables"],
        list_ids=list(row["list_ids"]),
        exclude_segment_ids=list(row["exclude_segment_ids"]),
        topic_id=row["topic_id"],
        from_email=row["from_email"],
        from_name=row["from_name"],
        reply_to=row["reply_to"],
        stream=row["stream"],
        scheduled_at=row["scheduled_at"],
        throttle_per_hour=row["throttle_per_hour"],
        window=msgspec.convert(window, Window) if window is not None else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _run(row: Any) -> Run:
    return Run(**{f: row[f] for f in Run.__struct_fields__})


def _send(row: Any) -> Send:
    return Send(**{f: row[f] for f in Send.__struct_fields__})
