"""``AudienceStore``: every read and write of the audience tables, per tenant.

One code path for SQLite and PostgreSQL (SQLAlchemy Core expressions with bound parameters);
the only dialect choice is which ``INSERT … ON CONFLICT`` construct to build. Every method
takes the tenant first and filters on it, so nothing crosses tenants.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience import schema
from gateway_plugins.audience.addresses import AddressError, normalize_email
from gateway_plugins.audience.consent import hash_identifier, hash_statement
from gateway_plugins.audience.model import (
    ConsentAction,
    ConsentEvidence,
    ConsentRecord,
    Contact,
    ContactStatus,
    Frequency,
    MailingList,
    Segment,
    Subscription,
    SubscriptionSource,
    SubscriptionStatus,
    Topic,
    TopicPreference,
)
from gateway_plugins.audience.segments import compile_filter, in_lists
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.clock import Clock


class AudienceError(Exception):
    """Base of the store's domain errors (mapped to problem details by the API)."""


class NotFound(AudienceError):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"no {kind} {ident}")
        self.kind = kind


class Conflict(AudienceError):
    """A unique name or address is taken."""


class ContactChanges(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields to set on a contact; ``UNSET`` fields keep their value."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    locale: str | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET
    attributes: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    """Merged into the stored attributes; a ``None`` value removes that attribute."""


_STATUS_RANK: dict[str, int] = {"active": 0, "bounced": 1, "complained": 2, "erased": 3}
"""A contact's status only moves up this order (a complaint outranks a bounce; erasure is final)."""


class AudienceStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self._salts: dict[str, bytes] = {}

    async def close(self) -> None:
        await self.engine.dispose()

    async def analyze(self) -> None:
        """Refresh the query planner's statistics of the tables segments read, after a bulk
        change (an import). Without them SQLite reaches every contact of a tenant through
        the tenant index, one random lookup each, instead of scanning the table."""
        async with self.engine.begin() as conn:
            for table in (schema.contacts, schema.subscriptions, schema.topic_preferences):
                await conn.execute(sa.text(f"ANALYZE {table.name}"))

    def member_of(self, column: sa.ColumnElement[Any], values: Sequence[Any]) -> Any:
        """``column IN values`` for long lists: on PostgreSQL one array parameter
        (``= ANY($1)``), which plans and binds far cheaper than thousands of parameters."""
        if not values:
            return sa.false()
        if self.engine.dialect.name == "postgresql":
            return column == sa.any_(
                sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))
            )
        return column.in_(values)

    async def insert_many(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        *,
        skip_conflicts: Sequence[str] = (),
        returning: Sequence[sa.ColumnElement[Any]] = (),
    ) -> list[sa.Row[Any]]:
        """Insert ``rows`` (dicts with the same keys) in bulk, skipping those that conflict
        on the ``skip_conflicts`` unique columns; the ``returning`` columns of the inserted
        ones. PostgreSQL gets one statement with one array parameter per column
        (``INSERT … SELECT FROM unnest(…)``): executing an INSERT per row there costs a
        server round of parse, plan and index work each, several times the whole batch.
        SQLite's executemany is already a tight loop inside one process."""
        if not rows:
            return []
        if self.engine.dialect.name == "sqlite":
            statement = sqlite.insert(table)
            if skip_conflicts:
                statement = statement.on_conflict_do_nothing(index_elements=list(skip_conflicts))
            if returning:
                return list(await conn.execute(statement.returning(*returning), list(rows)))
            await conn.execute(statement, list(rows))
            return []
        names = list(rows[0])
        arrays = []
        for name in names:
            column = table.c[name]
            values = [row[name] for row in rows]
            if isinstance(column.type, sa.JSON):  # text in, cast to jsonb below
                arrays.append(
                    sa.bindparam(None, [json.dumps(v) for v in values], type_=ARRAY(sa.Text))
                )
            else:
                arrays.append(sa.bindparam(None, values, type_=ARRAY(column.type)))
        source = sa.func.unnest(*arrays).table_valued(*names).render_derived(name="u")
        columns = [
            sa.cast(source.c[n], table.c[n].type)
            if isinstance(table.c[n].type, sa.JSON)
            else source.c[n]
            for n in names
        ]
        pg_statement = postgresql.insert(table).from_select(names, sa.select(*columns))
        if skip_conflicts:
            pg_statement = pg_statement.on_conflict_do_nothing(index_elements=list(skip_conflicts))
        if returning:
            return list(await conn.execute(pg_statement.returning(*returning)))
        await conn.execute(pg_statement)
        return []

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    # --- tenant salt ----------------------------------------------------------------------------

    async def salt(self, tenant: str) -> bytes:
        """The tenant's random HMAC salt for consent identifiers, made on first use."""
        known = self._salts.get(tenant)
        if known is not None:
            return known
        table = schema.tenant_salts
        async with self.engine.begin() as conn:
            await conn.execute(
                self._insert(table)
                .values(tenant=tenant, salt=secrets.token_bytes(32))
                .on_conflict_do_nothing(index_elements=["tenant"])
            )
            salt: bytes = (
                await conn.execute(sa.select(table.c.salt).where(table.c.tenant == tenant))
            ).scalar_one()
        self._salts[tenant] = salt
        return salt

    # --- contacts -------------------------------------------------------------------------------

    async def upsert_contact(
        self, tenant: str, email: str, changes: ContactChanges | None = None
    ) -> tuple[Contact, bool]:
        """Create the contact for ``email`` or update the existing one; (contact, created)."""
        key = normalize_email(email)
        changes = changes or ContactChanges()
        now = self.clock.now()
        async with self.engine.begin() as conn:
            existing = await self._contact_by_key(conn, tenant, key)
            if existing is None:
                attributes = {k: v for k, v in _or(changes.attributes, {}).items() if v is not None}
                try:
                    row = (
                        await conn.execute(
                            sa.insert(schema.contacts)
                            .values(
                                tenant=tenant,
                                email=email.strip(),
                                email_key=key,
                                name=_or(changes.name, ""),
                                locale=_or(changes.locale, ""),
                                timezone=_or(changes.timezone, ""),
                                attributes=attributes,
                                status="active",
                                created_at=now,
                                updated_at=now,
                            )
                            .returning(*schema.contacts.c)
                        )
                    ).one()
                except IntegrityError:
                    raise Conflict(f"contact {email!r} was created concurrently") from None
                return _contact(row), True
            return await self._update(conn, existing, changes, now), False

    async def update_contact(
        self, tenant: str, contact_id: int, changes: ContactChanges
    ) -> Contact:
        async with self.engine.begin() as conn:
            existing = await self._contact_by_id(conn, tenant, contact_id)
            if existing is None:
                raise NotFound("contact", contact_id)
            return await self._update(conn, existing, changes, self.clock.now())

    async def _update(
        self, conn: AsyncConnection, contact: Contact, changes: ContactChanges, now: float
    ) -> Contact:
        values: dict[str, Any] = {
            name: value
            for name in ("name", "locale", "timezone")
            if (value := getattr(changes, name)) is not msgspec.UNSET
        }
        if changes.attributes is not msgspec.UNSET:
            merged = {**contact.attributes, **changes.attributes}
            values["attributes"] = {k: v for k, v in merged.items() if v is not None}
        if not values:
            return contact
        values["updated_at"] = now
        c = schema.contacts.c
        row = (
            await conn.execute(
                sa.update(schema.contacts)
                .where(c.tenant == contact.tenant, c.id == contact.id)
                .values(**values)
                .returning(*schema.contacts.c)
            )
        ).one()
        return _contact(row)

    async def get_contact(self, tenant: str, contact_id: int) -> Contact:
        async with self.engine.connect() as conn:
            found = await self._contact_by_id(conn, tenant, contact_id)
        if found is None:
            raise NotFound("contact", contact_id)
        return found

    async def find_contact(self, tenant: str, email: str) -> Contact | None:
        async with self.engine.connect() as conn:
            return await self._contact_by_key(conn, tenant, normalize_email(email))

    async def list_contacts(
        self, tenant: str, *, after: int = 0, limit: int = 100, status: ContactStatus | None = None
    ) -> list[Contact]:
        c = schema.contacts.c
        query = sa.select(schema.contacts).where(c.tenant == tenant, c.id > after)
        if status is not None:
            query = query.where(c.status == status)
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(c.id).limit(limit))
            return [_contact(r) for r in rows]

    async def delete_contact(self, tenant: str, contact_id: int) -> None:
        c = schema.contacts.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.delete(schema.contacts).where(c.tenant == tenant, c.id == contact_id)
            )
        if done.rowcount == 0:
            raise NotFound("contact", contact_id)

    async def erase_contact(self, tenant: str, contact_id: int) -> Contact:
        """GDPR erasure: the contact row with its subscriptions and topic preferences goes,
        import error rows quoting the address go, and only an HMAC of the folded address is
        kept (``audience_erased``) so no import can add it back. The consent log stays (it
        holds no raw personal data: hashes, the method, who attested) for its retention.
        Returns the contact as it was."""
        salt = await self.salt(tenant)
        c = schema.contacts.c
        async with self.engine.begin() as conn:
            contact = await self._contact_by_id(conn, tenant, contact_id)
            if contact is None:
                raise NotFound("contact", contact_id)
            await conn.execute(
                self._insert(schema.erased)
                .values(
                    tenant=tenant,
                    email_hash=hash_identifier(salt, contact.email_key),
                    erased_at=self.clock.now(),
                )
                .on_conflict_do_nothing(index_elements=["tenant", "email_hash"])
            )
            await conn.execute(
                sa.delete(schema.contacts).where(c.tenant == tenant, c.id == contact_id)
            )
            e, i = schema.import_errors.c, schema.imports.c
            quoting = sa.or_(
                *(
                    sa.cast(e.fields, sa.Text).icontains(address, autoescape=True)
                    for address in {contact.email, contact.email_key}
                )
            )
            tenant_imports = sa.select(i.id).where(i.tenant == tenant).scalar_subquery()
            await conn.execute(
                sa.delete(schema.import_errors).where(e.import_id.in_(tenant_imports), quoting)
            )
        return contact

    async def count_link_mails(self, tenant: str, contact_id: int, since: float) -> int:
        m = schema.link_mails.c
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count()).where(
                    m.tenant == tenant, m.contact_id == contact_id, m.sent_at >= since
                )
            )
        return int(count or 0)

    async def record_link_mail(self, tenant: str, contact_id: int, now: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(schema.link_mails).values(
                    tenant=tenant, contact_id=contact_id, sent_at=now
                )
            )

    async def is_erased(self, tenant: str, email: str) -> bool:
        salt = await self.salt(tenant)
        er = schema.erased.c
        async with self.engine.connect() as conn:
            found = await conn.scalar(
                sa.select(er.email_hash).where(
                    er.tenant == tenant,
                    er.email_hash == hash_identifier(salt, normalize_email(email)),
                )
            )
        return found is not None

    async def set_status(self, tenant: str, email: str, status: ContactStatus) -> Contact | None:
        """Raise the contact's status (bounced, complained); ``None`` when there is no such
        contact or its status already ranks as high."""
        try:
            key = normalize_email(email)
        except AddressError:
            return None
        c = schema.contacts.c
        lower = [s for s, rank in _STATUS_RANK.items() if rank < _STATUS_RANK[status]]
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.update(schema.contacts)
                    .where(
                        c.tenant == tenant,
                        c.email_key == key,
                        c.status.in_(lower),
                    )
                    .values(status=status, updated_at=self.clock.now())
                    .returning(*schema.contacts.c)
                )
            ).one_or_none()
        return _contact(row) if row is not None else None

    async def _contact_by_key(self, conn: AsyncConnection, tenant: str, key: str) -> Contact | None:
        c = schema.contacts.c
        row = (
            await conn.execute(
                sa.select(schema.contacts).where(c.tenant == tenant, c.email_key == key)
            )
        ).one_or_none()
        return _contact(row) if row is not None else None

    async def _contact_by_id(
        self, conn: AsyncConnection, tenant: str, contact_id: int
    ) -> Contact | None:
        c = schema.contacts.c
        row = (
            await conn.execute(
                sa.select(schema.contacts).where(c.tenant == tenant, c.id == contact_id)
            )
        ).one_or_none()
        return _contact(row) if row is not None else None

    # --- lists and topics -----------------------------------------------------------------------

    async def create_list(self, tenant: str, name: str, **fields: Any) -> MailingList:
        row = await self._create(schema.lists, tenant, name, fields, "list")
        return _list(row)

    async def update_list(self, tenant: str, list_id: int, **fields: Any) -> MailingList:
        return _list(await self._change(schema.lists, tenant, list_id, fields, "list"))

    async def get_list(self, tenant: str, list_id: int) -> MailingList:
        return _list(await self._get(schema.lists, tenant, list_id, "list"))

    async def list_lists(
        self, tenant: str, *, after: int = 0, limit: int = 100
    ) -> list[MailingList]:
        return [_list(r) for r in await self._page(schema.lists, tenant, after, limit)]

    async def delete_list(self, tenant: str, list_id: int) -> None:
        await self._delete(schema.lists, tenant, list_id, "list")

    async def create_topic(self, tenant: str, name: str, **fields: Any) -> Topic:
        return _topic(await self._create(schema.topics, tenant, name, fields, "topic"))

    async def update_topic(self, tenant: str, topic_id: int, **fields: Any) -> Topic:
        return _topic(await self._change(schema.topics, tenant, topic_id, fields, "topic"))

    async def get_topic(self, tenant: str, topic_id: int) -> Topic:
        return _topic(await self._get(schema.topics, tenant, topic_id, "topic"))

    async def list_topics(self, tenant: str, *, after: int = 0, limit: int = 100) -> list[Topic]:
        return [_topic(r) for r in await self._page(schema.topics, tenant, after, limit)]

    async def delete_topic(self, tenant: str, topic_id: int) -> None:
        await self._delete(schema.topics, tenant, topic_id, "topic")

    async def _create(
        self, table: sa.Table, tenant: str, name: str, fields: Mapping[str, Any], kind: str
    ) -> sa.Row[Any]:
        values = {**fields, "tenant": tenant, "name": name, "created_at": self.clock.now()}
        try:
            async with self.engine.begin() as conn:
                return (
                    await conn.execute(sa.insert(table).values(values).returning(*table.c))
                ).one()
        except IntegrityError:
            raise Conflict(f"a {kind} named {name!r} exists") from None

    async def _change(
        self, table: sa.Table, tenant: str, ident: int, fields: Mapping[str, Any], kind: str
    ) -> sa.Row[Any]:
        if not fields:
            return await self._get(table, tenant, ident, kind)
        try:
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        sa.update(table)
                        .where(table.c.tenant == tenant, table.c.id == ident)
                        .values(**fields)
                        .returning(*table.c)
                    )
                ).one_or_none()
        except IntegrityError:
            raise Conflict(f"a {kind} named {fields.get('name')!r} exists") from None
        if row is None:
            raise NotFound(kind, ident)
        return row

    async def _get(self, table: sa.Table, tenant: str, ident: int, kind: str) -> sa.Row[Any]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(table).where(table.c.tenant == tenant, table.c.id == ident)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(kind, ident)
        return row

    async def _page(
        self, table: sa.Table, tenant: str, after: int, limit: int
    ) -> Sequence[sa.Row[Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(table)
                .where(table.c.tenant == tenant, table.c.id > after)
                .order_by(table.c.id)
                .limit(limit)
            )
            return rows.all()

    async def _delete(self, table: sa.Table, tenant: str, ident: int, kind: str) -> None:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                sa.delete(table).where(table.c.tenant == tenant, table.c.id == ident)
            )
        if done.rowcount == 0:
            raise NotFound(kind, ident)

    # --- segments -------------------------------------------------------------------------------

    async def create_segment(
        self, tenant: str, name: str, *, list_id: int | None, filter: dict[str, Any]
    ) -> Segment:
        compile_filter(tenant, filter)
        if list_id is not None:
            await self.get_list(tenant, list_id)
        now = self.clock.now()
        fields = {"list_id": list_id, "filter": filter, "updated_at": now}
        return _segment(await self._create(schema.segments, tenant, name, fields, "segment"))

    async def update_segment(self, tenant: str, segment_id: int, **fields: Any) -> Segment:
        if "filter" in fields:
            compile_filter(tenant, fields["filter"])
        if fields.get("list_id") is not None:
            await self.get_list(tenant, fields["list_id"])
        fields["updated_at"] = self.clock.now()
        return _segment(await self._change(schema.segments, tenant, segment_id, fields, "segment"))

    async def get_segment(self, tenant: str, segment_id: int) -> Segment:
        return _segment(await self._get(schema.segments, tenant, segment_id, "segment"))

    async def list_segments(
        self, tenant: str, *, after: int = 0, limit: int = 100
    ) -> list[Segment]:
        return [_segment(r) for r in await self._page(schema.segments, tenant, after, limit)]

    async def delete_segment(self, tenant: str, segment_id: int) -> None:
        await self._delete(schema.segments, tenant, segment_id, "segment")

    def segment_where(self, segment: Segment) -> Any:
        """The WHERE clause (over ``audience_contacts``) selecting ``segment``'s members now."""
        return self._matching(segment.tenant, segment.filter, segment.list_id)

    def _matching(self, tenant: str, filter: dict[str, Any], list_id: int | None) -> Any:
        """The WHERE clause of a segment: the tenant, the list (a segment narrows it, never
        widens it) and the compiled filter."""
        c = schema.contacts.c
        where = [c.tenant == tenant]
        if list_id is not None:
            where.append(in_lists(tenant, [list_id]))
        where.append(compile_filter(tenant, filter))
        return sa.and_(*where)

    async def count_matching(
        self, tenant: str, filter: dict[str, Any], list_id: int | None = None
    ) -> int:
        """How many contacts the filter selects now (raises ``SegmentError`` when invalid)."""
        query = sa.select(sa.func.count()).select_from(schema.contacts)
        async with self.engine.connect() as conn:
            count = await conn.scalar(query.where(self._matching(tenant, filter, list_id)))
        return int(count or 0)

    async def sample_matching(
        self, tenant: str, filter: dict[str, Any], list_id: int | None = None, limit: int = 10
    ) -> list[Contact]:
        """The first ``limit`` matching contacts, by id."""
        c = schema.contacts.c
        query = sa.select(schema.contacts).where(self._matching(tenant, filter, list_id))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(c.id).limit(limit))
            return [_contact(r) for r in rows]

    # --- subscriptions, topic preferences, consent ------------------------------------------------

    async def subscribe(
        self,
        tenant: str,
        list_id: int,
        contact_id: int,
        *,
        status: SubscriptionStatus,
        evidence: ConsentEvidence,
        resubscribe: bool = False,
    ) -> tuple[Subscription, bool]:
        """Subscribe (``active``) or start a double opt-in (``pending``); (subscription, changed).

        An unsubscribed contact stays unsubscribed unless ``resubscribe`` (the person asked
        again, on a form or the preference center): an import or an API call never undoes
        an opt-out. An active subscription is never turned back into a pending one.
        """
        now = self.clock.now()
        s = schema.subscriptions.c
        await self.salt(tenant)
        async with self.engine.begin() as conn:
            await self._check_owned(conn, tenant, list_id, contact_id)
            current = await self._subscription(conn, tenant, list_id, contact_id)
            if current is not None and (
                current.status == status
                or (current.status == "active" and status == "pending")
                or (current.status == "unsubscribed" and not resubscribe)
            ):
                return current, False
            if current is None:
                await conn.execute(
                    sa.insert(schema.subscriptions).values(
                        tenant=tenant,
                        list_id=list_id,
                        contact_id=contact_id,
                        status=status,
                        source=evidence.method,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                await conn.execute(
                    sa.update(schema.subscriptions)
                    .where(s.list_id == list_id, s.contact_id == contact_id)
                    .values(status=status, source=evidence.method, updated_at=now)
                )
            action: ConsentAction = "confirm" if status == "active" and current else "subscribe"
            await self._log(conn, tenant, contact_id, action, evidence, list_id=list_id)
            changed = await self._subscription(conn, tenant, list_id, contact_id)
        assert changed is not None
        return changed, True

    async def unsubscribe(
        self, tenant: str, list_id: int, contact_id: int, *, evidence: ConsentEvidence
    ) -> tuple[Subscription | None, bool]:
        """End the subscription to this one list (nothing else changes); (subscription,
        changed). ``None`` when the contact never was on the list."""
        s = schema.subscriptions.c
        await self.salt(tenant)
        async with self.engine.begin() as conn:
            await self._check_owned(conn, tenant, list_id, contact_id)
            current = await self._subscription(conn, tenant, list_id, contact_id)
            if current is None or current.status == "unsubscribed":
                return current, False
            await conn.execute(
                sa.update(schema.subscriptions)
                .where(s.list_id == list_id, s.contact_id == contact_id)
                .values(status="unsubscribed", source=evidence.method, updated_at=self.clock.now())
            )
            await self._log(conn, tenant, contact_id, "unsubscribe", evidence, list_id=list_id)
            changed = await self._subscription(conn, tenant, list_id, contact_id)
        return changed, True

    async def set_topic(
        self,
        tenant: str,
        topic_id: int,
        contact_id: int,
        *,
        subscribed: bool,
        frequency: Frequency | None,
        evidence: ConsentEvidence,
    ) -> TopicPreference:
        """Opt in or out of a topic, with a frequency (default: the topic's)."""
        now = self.clock.now()
        await self.salt(tenant)
        async with self.engine.begin() as conn:
            topic = await self._owned_topic(conn, tenant, topic_id)
            await self._check_contact(conn, tenant, contact_id)
            chosen = frequency or topic.default_frequency
            t = schema.topic_preferences
            insert = self._insert(t).values(
                tenant=tenant,
                topic_id=topic_id,
                contact_id=contact_id,
                subscribed=subscribed,
                frequency=chosen,
                updated_at=now,
            )
            await conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["topic_id", "contact_id"],
                    set_={"subscribed": subscribed, "frequency": chosen, "updated_at": now},
                )
            )
            await self._log(conn, tenant, contact_id, "topic", evidence, topic_id=topic_id)
        return TopicPreference(
            tenant=tenant,
            topic_id=topic_id,
            contact_id=contact_id,
            subscribed=subscribed,
            frequency=chosen,
            updated_at=now,
        )

    async def subscriptions_of(self, tenant: str, contact_id: int) -> list[Subscription]:
        s = schema.subscriptions.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(schema.subscriptions)
                .where(s.tenant == tenant, s.contact_id == contact_id)
                .order_by(s.list_id)
            )
            return [_subscription(r) for r in rows]

    async def topics_of(self, tenant: str, contact_id: int) -> list[TopicPreference]:
        t = schema.topic_preferences.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(schema.topic_preferences)
                .where(t.tenant == tenant, t.contact_id == contact_id)
                .order_by(t.topic_id)
            )
            return [
                TopicPreference(
                    tenant=r.tenant,
                    topic_id=r.topic_id,
                    contact_id=r.contact_id,
                    subscribed=r.subscribed,
                    frequency=r.frequency,
                    updated_at=r.updated_at,
                )
                for r in rows
            ]

    async def consent_log(self, tenant: str, contact_id: int) -> list[ConsentRecord]:
        log = schema.consent_log.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(schema.consent_log)
                .where(log.tenant == tenant, log.contact_id == contact_id)
                .order_by(log.id)
            )
            return [msgspec.convert(row_fields(r), ConsentRecord) for r in rows]

    async def _log(
        self,
        conn: AsyncConnection,
        tenant: str,
        contact_id: int,
        action: ConsentAction,
        evidence: ConsentEvidence,
        *,
        list_id: int | None = None,
        topic_id: int | None = None,
    ) -> None:
        # Callers load the salt (``await self.salt(tenant)``) before their transaction: a
        # second connection inside a SQLite write transaction would wait on our own lock.
        salt = self._salts[tenant]
        await conn.execute(
            sa.insert(schema.consent_log).values(
                tenant=tenant,
                contact_id=contact_id,
                action=action,
                list_id=list_id,
                topic_id=topic_id,
                method=evidence.method,
                form_id=evidence.form_id,
                ip_hash=hash_identifier(salt, evidence.ip),
                user_agent_hash=hash_identifier(salt, evidence.user_agent),
                statement_version=evidence.statement_version,
                statement_hash=hash_statement(evidence.statement),
                collected_at=evidence.collected_at,
                confirmed_at=evidence.confirmed_at,
                import_id=evidence.import_id,
                attested_by=evidence.attested_by,
                at=self.clock.now(),
            )
        )

    async def _subscription(
        self, conn: AsyncConnection, tenant: str, list_id: int, contact_id: int
    ) -> Subscription | None:
        s = schema.subscriptions.c
        row = (
            await conn.execute(
                sa.select(schema.subscriptions).where(
                    s.tenant == tenant, s.list_id == list_id, s.contact_id == contact_id
                )
            )
        ).one_or_none()
        return _subscription(row) if row is not None else None

    async def _check_owned(
        self, conn: AsyncConnection, tenant: str, list_id: int, contact_id: int
    ) -> None:
        lists = schema.lists.c
        found = await conn.scalar(
            sa.select(lists.id).where(lists.tenant == tenant, lists.id == list_id)
        )
        if found is None:
            raise NotFound("list", list_id)
        await self._check_contact(conn, tenant, contact_id)

    async def _check_contact(self, conn: AsyncConnection, tenant: str, contact_id: int) -> None:
        c = schema.contacts.c
        found = await conn.scalar(sa.select(c.id).where(c.tenant == tenant, c.id == contact_id))
        if found is None:
            raise NotFound("contact", contact_id)

    async def _owned_topic(self, conn: AsyncConnection, tenant: str, topic_id: int) -> Topic:
        t = schema.topics.c
        row = (
            await conn.execute(sa.select(schema.topics).where(t.tenant == tenant, t.id == topic_id))
        ).one_or_none()
        if row is None:
            raise NotFound("topic", topic_id)
        return _topic(row)


def _or(value: Any, default: Any) -> Any:
    return default if value is msgspec.UNSET else value


def row_fields(row: sa.Row[Any]) -> dict[str, Any]:
    # Column keys may be str subclasses (quoted_name), which msgspec refuses as keys.
    return {str(key): value for key, value in row._mapping.items()}


def _contact(row: sa.Row[Any]) -> Contact:
    return msgspec.convert(row_fields(row), Contact)


def _list(row: sa.Row[Any]) -> MailingList:
    return msgspec.convert(row_fields(row), MailingList)


def _topic(row: sa.Row[Any]) -> Topic:
    return msgspec.convert(row_fields(row), Topic)


def _segment(row: sa.Row[Any]) -> Segment:
    return msgspec.convert(row_fields(row), Segment)


def _subscription(row: sa.Row[Any]) -> Subscription:
    return msgspec.convert(row_fields(row), Subscription)


__all__ = [
    "AudienceError",
    "AudienceStore",
    "Conflict",
    "ContactChanges",
    "NotFound",
    "SubscriptionSource",
]
