"""Walking a campaign's audience in keyset pages: the contacts subscribed (in any state) to
any of its lists, each once, by contact id — with what decides whether each gets the mail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience import schema as audience
from gateway_plugins.audience.model import Contact
from gateway_plugins.audience.store import AudienceStore

_RANK = {2: "active", 1: "pending", 0: "unsubscribed"}


class Candidate(msgspec.Struct, kw_only=True):
    contact: Contact
    subscription: str
    """The best state over the campaign's lists: ``active``, ``pending`` or ``unsubscribed``."""
    list_id: int
    """An active list (the lowest id) when there is one, else the lowest list id."""


async def page(
    store: AudienceStore, tenant: str, list_ids: Sequence[int], after: int, limit: int
) -> list[Candidate]:
    """Up to ``limit`` candidates with contact id above ``after``, in id order."""
    s, c = audience.subscriptions, audience.contacts
    rank = sa.case((s.c.status == "active", 2), (s.c.status == "pending", 1), else_=0)
    active_list = sa.case((s.c.status == "active", s.c.list_id), else_=None)
    grouped = (
        sa.select(
            s.c.contact_id.label("contact_id"),
            sa.func.max(rank).label("rank"),
            sa.func.min(active_list).label("active_list"),
            sa.func.min(s.c.list_id).label("any_list"),
        )
        .where(s.c.tenant == tenant, store.member_of(s.c.list_id, list_ids), s.c.contact_id > after)
        .group_by(s.c.contact_id)
        .order_by(s.c.contact_id)
        .limit(limit)
        .subquery()
    )
    query = (
        sa.select(c, grouped.c.rank, grouped.c.active_list, grouped.c.any_list)
        .join(grouped, grouped.c.contact_id == c.c.id)
        .order_by(c.c.id)
    )
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        Candidate(
            contact=_contact(r),
            subscription=_RANK[int(r["rank"])],
            list_id=int(r["active_list"] if r["active_list"] is not None else r["any_list"]),
        )
        for r in rows
    ]


async def contacts_by_id(
    store: AudienceStore, tenant: str, contact_ids: Sequence[int]
) -> dict[int, Contact]:
    c = audience.contacts
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(c).where(c.c.tenant == tenant, store.member_of(c.c.id, contact_ids))
        )
        return {r["id"]: _contact(r) for r in rows.mappings()}


async def excluded(
    store: AudienceStore, tenant: str, segment_ids: Sequence[int], contact_ids: Sequence[int]
) -> set[int]:
    """Those of ``contact_ids`` in any of the exclusion segments (as they are now)."""
    if not segment_ids or not contact_ids:
        return set()
    c = audience.contacts
    found: set[int] = set()
    async with store.engine.connect() as conn:
        for segment_id in segment_ids:
            segment = await store.get_segment(tenant, segment_id)
            where = store.segment_where(segment)
            rows = await conn.execute(
                sa.select(c.c.id).where(where, store.member_of(c.c.id, contact_ids))
            )
            found.update(rows.scalars())
    return found


async def topic_opted_out(
    store: AudienceStore, tenant: str, topic_id: int | None, contact_ids: Sequence[int]
) -> set[int]:
    """Those of ``contact_ids`` who turned ``topic_id`` off in their preferences."""
    if topic_id is None or not contact_ids:
        return set()
    t = audience.topic_preferences
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.contact_id).where(
                t.c.tenant == tenant,
                t.c.topic_id == topic_id,
                t.c.subscribed.is_(False),
                store.member_of(t.c.contact_id, contact_ids),
            )
        )
        return set(rows.scalars())


async def list_names(store: AudienceStore, tenant: str, list_ids: Sequence[int]) -> dict[int, str]:
    lists = audience.lists
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(lists.c.id, lists.c.name).where(
                lists.c.tenant == tenant, store.member_of(lists.c.id, list_ids)
            )
        )
        return {int(i): str(n) for i, n in rows}


def _contact(row: Any) -> Contact:
    return Contact(
        id=row["id"],
        tenant=row["tenant"],
        email=row["email"],
        email_key=row["email_key"],
        name=row["name"],
        locale=row["locale"],
        timezone=row["timezone"],
        attributes=dict(row["attributes"] or {}),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
