"""Events, flows, enrolments and their paths in SQL; one code path for SQLite and PostgreSQL.

Claiming a due step is one conditional UPDATE per enrolment (``lease_until`` in the past),
after a candidate SELECT that on PostgreSQL takes row locks with ``FOR UPDATE SKIP LOCKED`` so
nodes do not queue behind each other. Every later write of a claimed enrolment checks its
``lease_owner``, so a node whose lease ran out cannot overwrite the node that took over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from gateway_plugins.automation import schema as t
from gateway_plugins.automation.flows import Flow, parse_flow
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.clock import Clock

FlowStatus = Literal["active", "paused", "archived"]
State = Literal["active", "waiting", "completed", "goal", "exited"]
OPEN_STATES = ("active", "waiting")
"""An enrolment in these is in flight; the others are final."""


class NotFound(Exception):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"no {kind} {ident}")
        self.kind = kind


class Conflict(Exception):
    pass


class FlowRow(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    status: FlowStatus
    version: int
    trigger_event: str
    created_at: float
    updated_at: float


class Enrolment(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    flow_id: int
    version: int
    contact_id: int
    state: State
    step: int
    due_at: float | None
    wait_event: str
    lease_owner: str
    lease_until: float
    reason: str
    trigger: dict[str, Any]
    started_at: float
    ended_at: float | None


class PathEntry(msgspec.Struct, kw_only=True):
    step: int
    kind: str
    outcome: str
    message_id: str
    at: float


def _flow(row: sa.Row[Any]) -> FlowRow:
    return FlowRow(**dict(row._mapping))


def _enrolment(row: sa.Row[Any]) -> Enrolment:
    return Enrolment(**dict(row._mapping))


class AutomationStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.postgres = engine.dialect.name == "postgresql"
        self._versions: dict[tuple[int, int], Flow] = {}
        """Versions never change once stored, so each is parsed once."""

    async def close(self) -> None:
        await self.engine.dispose()

    # --- events --------------------------------------------------------------------------------

    async def add_event(
        self,
        tenant: str,
        event_id: str,
        name: str,
        contact_id: int,
        properties: dict[str, Any],
        *,
        source: str,
        at: float,
        message_id: str = "",
    ) -> bool:
        """Store the event; ``False`` if this tenant already has one with ``event_id``."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    t.events.insert().values(
                        tenant=tenant,
                        event_id=event_id,
                        name=name,
                        contact_id=contact_id,
                        properties=properties,
                        source=source,
                        message_id=message_id,
                        at=at,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def had_event(
        self, tenant: str, contact_id: int, name: str, since: float, message_id: str = ""
    ) -> bool:
        query = sa.select(t.events.c.id).where(
            t.events.c.tenant == tenant,
            t.events.c.contact_id == contact_id,
            t.events.c.name == name,
            t.events.c.at >= since,
        )
        if message_id:
            query = query.where(t.events.c.message_id == message_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    # --- flows ---------------------------------------------------------------------------------

    async def create_flow(self, tenant: str, flow: Flow, document: dict[str, Any]) -> FlowRow:
        now = self.clock.now()
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    t.flows.insert()
                    .values(
                        tenant=tenant,
                        name=flow.name,
                        status="active",
                        version=1,
                        trigger_event=flow.trigger.event,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(t.flows.c.id)
                )
                flow_id = result.scalar_one()
                await conn.execute(
                    t.flow_versions.insert().values(
                        flow_id=flow_id, version=1, definition=document, created_at=now
                    )
                )
        except IntegrityError:
            raise Conflict(f"a flow named {flow.name!r} exists") from None
        return await self.get_flow(tenant, flow_id)

    async def new_version(
        self, tenant: str, flow_id: int, flow: Flow, document: dict[str, Any]
    ) -> FlowRow:
        """A new version for new enrolments; enrolments in flight keep theirs."""
        now = self.clock.now()
        try:
            async with self.engine.begin() as conn:
                row = await self._flow_row(conn, tenant, flow_id, lock=True)
                version = row.version + 1
                await conn.execute(
                    t.flow_versions.insert().values(
                        flow_id=flow_id, version=version, definition=document, created_at=now
                    )
                )
                await conn.execute(
                    t.flows.update()
                    .where(t.flows.c.id == flow_id)
                    .values(
                        version=version,
                        name=flow.name,
                        trigger_event=flow.trigger.event,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise Conflict(f"a flow named {flow.name!r} exists") from None
        return await self.get_flow(tenant, flow_id)

    async def _flow_row(
        self, conn: AsyncConnection, tenant: str, flow_id: int, *, lock: bool = False
    ) -> FlowRow:
        query = sa.select(t.flows).where(t.flows.c.tenant == tenant, t.flows.c.id == flow_id)
        if lock and self.postgres:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("flow", flow_id)
        return _flow(row)

    async def get_flow(self, tenant: str, flow_id: int) -> FlowRow:
        async with self.engine.connect() as conn:
            return await self._flow_row(conn, tenant, flow_id)

    async def list_flows(self, tenant: str) -> list[FlowRow]:
        query = sa.select(t.flows).where(t.flows.c.tenant == tenant).order_by(t.flows.c.id)
        async with self.engine.connect() as conn:
            return [_flow(r) for r in await conn.execute(query)]

    async def set_status(self, tenant: str, flow_id: int, status: FlowStatus) -> FlowRow:
        """Pause (steps hold where they are), resume, or archive (enrolments in flight end)."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await self._flow_row(conn, tenant, flow_id, lock=True)
            await conn.execute(
                t.flows.update()
                .where(t.flows.c.id == flow_id)
                .values(status=status, updated_at=now)
            )
            if status == "archived":
                await conn.execute(
                    t.enrolments.update()
                    .where(
                        t.enrolments.c.flow_id == flow_id,
                        t.enrolments.c.state.in_(OPEN_STATES),
                    )
                    .values(state="exited", reason="archived", ended_at=now, due_at=None)
                )
        return await self.get_flow(tenant, flow_id)

    async def definition(self, flow_id: int, version: int) -> Flow:
        key = (flow_id, version)
        if key not in self._versions:
            query = sa.select(t.flow_versions.c.definition).where(
                t.flow_versions.c.flow_id == flow_id, t.flow_versions.c.version == version
            )
            async with self.engine.connect() as conn:
                document = (await conn.execute(query)).scalar_one()
            self._versions[key] = parse_flow(document)
        return self._versions[key]

    async def document(self, tenant: str, flow_id: int, version: int) -> dict[str, Any]:
        query = (
            sa.select(t.flow_versions.c.definition)
            .join(t.flows, t.flows.c.id == t.flow_versions.c.flow_id)
            .where(
                t.flows.c.tenant == tenant,
                t.flow_versions.c.flow_id == flow_id,
                t.flow_versions.c.version == version,
            )
        )
        async with self.engine.connect() as conn:
            document = (await conn.execute(query)).scalar_one_or_none()
        if document is None:
            raise NotFound("flow version", f"{flow_id} v{version}")
        result: dict[str, Any] = document
        return result

    async def triggered_by(self, tenant: str, event: str) -> list[FlowRow]:
        query = sa.select(t.flows).where(
            t.flows.c.tenant == tenant,
            t.flows.c.trigger_event == event,
            t.flows.c.status == "active",
        )
        async with self.engine.connect() as conn:
            return [_flow(r) for r in await conn.execute(query)]

    # --- enrolments ----------------------------------------------------------------------------

    async def enrol(
        self, flow: FlowRow, definition: Flow, contact_id: int, trigger: dict[str, Any], now: float
    ) -> int | None:
        """A new enrolment at step 0, due now; ``None`` when re-entry or cooldown forbid it."""
        async with self.engine.begin() as conn:
            await self._flow_row(conn, flow.tenant, flow.id, lock=True)
            mine = t.enrolments.c
            previous = (
                await conn.execute(
                    sa.select(mine.state, mine.started_at)
                    .where(mine.flow_id == flow.id, mine.contact_id == contact_id)
                    .order_by(mine.id.desc())
                )
            ).all()
            if previous:
                if definition.reentry == "never":
                    return None
                if definition.reentry == "after_exit" and any(
                    r.state in OPEN_STATES for r in previous
                ):
                    return None
                if now - previous[0].started_at < definition.cooldown_seconds:
                    return None
            result = await conn.execute(
                t.enrolments.insert()
                .values(
                    tenant=flow.tenant,
                    flow_id=flow.id,
                    version=flow.version,
                    contact_id=contact_id,
                    state="active",
                    step=0,
                    due_at=now,
                    trigger=trigger,
                    started_at=now,
                )
                .returning(mine.id)
            )
            enrolment_id: int = result.scalar_one()
            await conn.execute(
                t.path.insert().values(
                    enrolment_id=enrolment_id, step=0, kind="enrol", outcome="entered", at=now
                )
            )
            return enrolment_id

    async def claim_due(self, owner: str, now: float, lease: float, limit: int) -> list[Enrolment]:
        """Due enrolments of active flows, each leased to ``owner`` (and no other node)."""
        e = t.enrolments.c
        candidates = (
            sa.select(e.id)
            .join(t.flows, t.flows.c.id == e.flow_id)
            .where(
                e.state.in_(OPEN_STATES),
                e.due_at <= now,
                e.lease_until < now,
                t.flows.c.status == "active",
            )
            .order_by(e.due_at)
            .limit(limit)
        )
        if self.postgres:
            candidates = candidates.with_for_update(of=t.enrolments, skip_locked=True)
        async with self.engine.begin() as conn:
            ids = list((await conn.execute(candidates)).scalars())
            claimed: list[Enrolment] = []
            for ident in ids:
                result = await conn.execute(
                    t.enrolments.update()
                    .where(
                        e.id == ident,
                        e.state.in_(OPEN_STATES),
                        e.due_at <= now,
                        e.lease_until < now,
                    )
                    .values(lease_owner=owner, lease_until=now + lease)
                    .returning(*t.enrolments.c)
                )
                row = result.first()
                if row is not None:
                    claimed.append(_enrolment(row))
        return claimed

    async def save(
        self,
        enrolment: Enrolment,
        owner: str,
        entries: Sequence[PathEntry],
        *,
        release: bool = True,
    ) -> bool:
        """Write the claimed enrolment's new position and its path entries; ``False`` (and
        nothing written) if ``owner`` no longer holds it or it has ended meanwhile."""
        e = t.enrolments.c
        values: dict[str, Any] = {
            "state": enrolment.state,
            "step": enrolment.step,
            "due_at": enrolment.due_at,
            "wait_event": enrolment.wait_event,
            "reason": enrolment.reason,
            "ended_at": enrolment.ended_at,
        }
        if release:
            values.update(lease_owner="", lease_until=0.0)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.enrolments.update()
                .where(e.id == enrolment.id, e.lease_owner == owner, e.state.in_(OPEN_STATES))
                .values(**values)
            )
            if result.rowcount != 1:
                return False
            if entries:
                await conn.execute(
                    t.path.insert(),
                    [{"enrolment_id": enrolment.id, **msgspec.structs.asdict(p)} for p in entries],
                )
        return True

    async def open_enrolments(self, tenant: str, contact_id: int) -> list[Enrolment]:
        e = t.enrolments.c
        query = sa.select(t.enrolments).where(
            e.tenant == tenant, e.contact_id == contact_id, e.state.in_(OPEN_STATES)
        )
        async with self.engine.connect() as conn:
            return [_enrolment(r) for r in await conn.execute(query)]

    async def end(self, enrolment: Enrolment, state: State, reason: str, step: int) -> bool:
        """End an open enrolment from outside its run (a goal reached): ``False`` if it had
        already ended."""
        now = self.clock.now()
        e = t.enrolments.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.enrolments.update()
                .where(e.id == enrolment.id, e.state.in_(OPEN_STATES))
                .values(state=state, reason=reason, ended_at=now, due_at=None)
            )
            if result.rowcount != 1:
                return False
            await conn.execute(
                t.path.insert().values(
                    enrolment_id=enrolment.id, step=step, kind="end", outcome=reason, at=now
                )
            )
        return True

    async def wake_waiting(self, tenant: str, contact_id: int, event: str, now: float) -> int:
        """Enrolments waiting for ``event`` become due now."""
        e = t.enrolments.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                t.enrolments.update()
                .where(
                    e.tenant == tenant,
                    e.contact_id == contact_id,
                    e.state == "waiting",
                    e.wait_event == event,
                )
                .values(state="active", due_at=now, wait_event="", reason="event:" + event)
            )
            return int(result.rowcount)

    async def get_enrolment(self, tenant: str, enrolment_id: int) -> Enrolment:
        query = sa.select(t.enrolments).where(
            t.enrolments.c.tenant == tenant, t.enrolments.c.id == enrolment_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound("enrolment", enrolment_id)
        return _enrolment(row)

    async def enrolments_of(self, tenant: str, contact_id: int) -> list[Enrolment]:
        e = t.enrolments.c
        query = (
            sa.select(t.enrolments)
            .where(e.tenant == tenant, e.contact_id == contact_id)
            .order_by(e.id)
        )
        async with self.engine.connect() as conn:
            return [_enrolment(r) for r in await conn.execute(query)]

    async def path_of(self, enrolment_id: int) -> list[PathEntry]:
        p = t.path.c
        query = (
            sa.select(p.step, p.kind, p.outcome, p.message_id, p.at)
            .where(p.enrolment_id == enrolment_id)
            .order_by(p.id)
        )
        async with self.engine.connect() as conn:
            return [PathEntry(**dict(r._mapping)) for r in await conn.execute(query)]

    async def sent_message(self, enrolment_id: int, step: int | None) -> str:
        """The message id a send step of the enrolment handed over (``None``: the latest)."""
        p = t.path.c
        query = sa.select(p.message_id).where(
            p.enrolment_id == enrolment_id, p.kind == "send", p.outcome == "sent"
        )
        if step is not None:
            query = query.where(p.step == step)
        async with self.engine.connect() as conn:
            found = (await conn.execute(query.order_by(p.id.desc()).limit(1))).scalar()
        return found or ""

    async def stats(self, tenant: str, flow_id: int) -> dict[str, Any]:
        """Per flow: enrolments by state and step, sends per step, ends by reason."""
        e, p = t.enrolments.c, t.path.c
        async with self.engine.connect() as conn:
            await self._flow_row(conn, tenant, flow_id)
            at_step = await conn.execute(
                sa.select(e.step, e.state, sa.func.count())
                .where(e.flow_id == flow_id, e.state.in_(OPEN_STATES))
                .group_by(e.step, e.state)
            )
            ends = await conn.execute(
                sa.select(e.state, e.reason, sa.func.count())
                .where(e.flow_id == flow_id, e.state.not_in(OPEN_STATES))
                .group_by(e.state, e.reason)
            )
            steps = await conn.execute(
                sa.select(p.step, p.kind, p.outcome, sa.func.count())
                .join(t.enrolments, t.enrolments.c.id == p.enrolment_id)
                .where(e.flow_id == flow_id, p.kind.in_(("send", "branch", "update")))
                .group_by(p.step, p.kind, p.outcome)
            )
            total = await conn.execute(sa.select(sa.func.count()).where(e.flow_id == flow_id))
            return {
                "enrolled": total.scalar_one(),
                "in_flight": [{"step": s, "state": st, "contacts": n} for s, st, n in at_step],
                "steps": [{"step": s, "kind": k, "outcome": o, "count": n} for s, k, o, n in steps],
                "ended": [{"state": st, "reason": r, "count": n} for st, r, n in ends],
            }
