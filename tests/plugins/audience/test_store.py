"""The audience store's contract, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from gateway_plugins.audience import schema
from gateway_plugins.audience.addresses import AddressError
from gateway_plugins.audience.engine import current_revision, head_revision, migrate
from gateway_plugins.audience.model import ConsentEvidence
from gateway_plugins.audience.store import AudienceStore, Conflict, ContactChanges, NotFound

from gateway.clock import FakeClock

FORM = ConsentEvidence(
    method="form",
    form_id="newsletter-footer",
    ip="203.0.113.9",
    user_agent="Mozilla/5.0 (test)",
    statement_version="v3",
    statement="Yes, send me the newsletter.",
    collected_at=1_800_000_000.0,
)
API = ConsentEvidence(method="api")


async def test_migrations_build_exactly_the_declared_schema(audience_store: AudienceStore) -> None:
    def differences(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection)
        return [
            d
            for d in compare_metadata(context, schema.metadata)
            if not (
                isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version"
            )
        ]

    async with audience_store.engine.connect() as conn:
        assert await conn.run_sync(differences) == []
        assert await conn.run_sync(current_revision) == head_revision()
    await migrate(audience_store.engine)  # current: a no-op
    async with audience_store.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()


async def test_contacts_are_keyed_by_their_folded_address(audience_store: AudienceStore) -> None:
    ann, created = await audience_store.upsert_contact(
        "acme", " Ann.Lee@Bücher.Example ", ContactChanges(name="Ann", attributes={"plan": "pro"})
    )
    assert created
    assert ann.email == "Ann.Lee@Bücher.Example"
    assert ann.email_key == "ann.lee@xn--bcher-kva.example"
    again, created = await audience_store.upsert_contact(
        "acme",
        "ann.lee@xn--bcher-kva.example",
        ContactChanges(attributes={"seats": 3, "plan": None}),
    )
    assert not created and again.id == ann.id
    assert again.name == "Ann" and again.attributes == {"seats": 3}
    assert (await audience_store.find_contact("acme", "ANN.LEE@bücher.example")) == again
    with pytest.raises(AddressError):
        await audience_store.upsert_contact("acme", "not-an-address")


async def test_nothing_crosses_tenants(audience_store: AudienceStore) -> None:
    ann, _ = await audience_store.upsert_contact("acme", "ann@acme.test")
    news = await audience_store.create_list("acme", "News", opt_in="single", visibility="public")
    topic = await audience_store.create_topic("acme", "Tips", default_frequency="weekly")
    other, created = await audience_store.upsert_contact("globex", "ann@acme.test")
    assert created and other.id != ann.id
    with pytest.raises(NotFound):
        await audience_store.get_contact("globex", ann.id)
    with pytest.raises(NotFound):
        await audience_store.get_list("globex", news.id)
    with pytest.raises(NotFound):
        await audience_store.subscribe("globex", news.id, other.id, status="active", evidence=API)
    with pytest.raises(NotFound):
        await audience_store.subscribe("acme", news.id, other.id, status="active", evidence=API)
    with pytest.raises(NotFound):
        await audience_store.set_topic(
            "globex", topic.id, other.id, subscribed=True, frequency=None, evidence=API
        )
    with pytest.raises(NotFound):
        await audience_store.delete_list("globex", news.id)
    assert [c.id for c in await audience_store.list_contacts("globex")] == [other.id]
    assert await audience_store.list_lists("globex") == []
    await audience_store.get_list("acme", news.id)


async def test_names_are_unique_per_tenant(audience_store: AudienceStore) -> None:
    await audience_store.create_list("acme", "News", opt_in="single", visibility="public")
    with pytest.raises(Conflict):
        await audience_store.create_list("acme", "News", opt_in="double", visibility="public")
    await audience_store.create_list("globex", "News", opt_in="single", visibility="private")


async def test_double_opt_in_and_an_unsubscribe_that_stays(audience_store: AudienceStore) -> None:
    ann, _ = await audience_store.upsert_contact("acme", "ann@acme.test")
    news = await audience_store.create_list("acme", "News", opt_in="double", visibility="public")
    pending, changed = await audience_store.subscribe(
        "acme", news.id, ann.id, status="pending", evidence=FORM
    )
    assert changed and pending.status == "pending" and pending.source == "form"
    active, changed = await audience_store.subscribe(
        "acme", news.id, ann.id, status="active", evidence=FORM
    )
    assert changed and active.status == "active"
    # An active subscription is not sent back to pending by a second signup.
    again, changed = await audience_store.subscribe(
        "acme", news.id, ann.id, status="pending", evidence=FORM
    )
    assert not changed and again.status == "active"
    gone, changed = await audience_store.unsubscribe(
        "acme", news.id, ann.id, evidence=ConsentEvidence(method="one-click")
    )
    assert changed and gone is not None and gone.status == "unsubscribed"
    kept, changed = await audience_store.subscribe(
        "acme", news.id, ann.id, status="active", evidence=ConsentEvidence(method="import")
    )
    assert not changed and kept.status == "unsubscribed"
    back, changed = await audience_store.subscribe(
        "acme", news.id, ann.id, status="pending", evidence=FORM, resubscribe=True
    )
    assert changed and back.status == "pending"
    # The contact itself stays active: an unsubscribe changes one subscription only.
    assert (await audience_store.get_contact("acme", ann.id)).status == "active"


async def test_the_consent_log_keeps_hashes_never_raw_identifiers(
    audience_store: AudienceStore,
) -> None:
    ann, _ = await audience_store.upsert_contact("acme", "ann@acme.test")
    bob, _ = await audience_store.upsert_contact("globex", "bob@globex.test")
    news = await audience_store.create_list("acme", "News", opt_in="single", visibility="public")
    other = await audience_store.create_list("globex", "News", opt_in="single", visibility="public")
    await audience_store.subscribe("acme", news.id, ann.id, status="active", evidence=FORM)
    await audience_store.subscribe("globex", other.id, bob.id, status="active", evidence=FORM)
    await audience_store.unsubscribe("acme", news.id, ann.id, evidence=API)
    log = await audience_store.consent_log("acme", ann.id)
    assert [r.action for r in log] == ["subscribe", "unsubscribe"]
    first = log[0]
    assert first.method == "form" and first.form_id == "newsletter-footer"
    assert len(first.ip_hash) == 64 and len(first.user_agent_hash) == 64
    assert first.statement_version == "v3" and len(first.statement_hash) == 64
    assert first.collected_at == 1_800_000_000.0 and first.list_id == news.id
    theirs = (await audience_store.consent_log("globex", bob.id))[0]
    assert theirs.ip_hash != first.ip_hash, "the salt is per tenant"
    async with audience_store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(schema.consent_log))).all()
    dumped = repr(rows)
    assert "203.0.113.9" not in dumped and "Mozilla" not in dumped


async def test_topics_have_a_preference_and_a_frequency(audience_store: AudienceStore) -> None:
    ann, _ = await audience_store.upsert_contact("acme", "ann@acme.test")
    tips = await audience_store.create_topic("acme", "Tips", default_frequency="weekly")
    pref = await audience_store.set_topic(
        "acme", tips.id, ann.id, subscribed=True, frequency=None, evidence=API
    )
    assert pref.subscribed and pref.frequency == "weekly"
    await audience_store.set_topic(
        "acme", tips.id, ann.id, subscribed=False, frequency="monthly", evidence=API
    )
    [stored] = await audience_store.topics_of("acme", ann.id)
    assert not stored.subscribed and stored.frequency == "monthly"


async def test_status_only_moves_up(audience_store: AudienceStore) -> None:
    await audience_store.upsert_contact("acme", "ann@acme.test")
    assert (await audience_store.set_status("acme", "ANN@acme.test", "bounced")) is not None
    assert (await audience_store.set_status("acme", "ann@acme.test", "bounced")) is None
    complained = await audience_store.set_status("acme", "ann@acme.test", "complained")
    assert complained is not None and complained.status == "complained"
    assert (await audience_store.set_status("acme", "ann@acme.test", "bounced")) is None
    assert (await audience_store.set_status("globex", "ann@acme.test", "bounced")) is None
    assert (await audience_store.set_status("acme", "not an address", "bounced")) is None


async def test_pages_are_ordered_by_id(audience_store: AudienceStore) -> None:
    ids = [(await audience_store.upsert_contact("acme", f"c{i}@acme.test"))[0].id for i in range(5)]
    first = await audience_store.list_contacts("acme", limit=2)
    rest = await audience_store.list_contacts("acme", after=first[-1].id, limit=10)
    assert [c.id for c in first + rest] == ids


async def test_a_second_store_on_the_same_database_migrates_nothing(
    audience_store: AudienceStore,
) -> None:
    other = AudienceStore(audience_store.engine, FakeClock())
    await migrate(other.engine)
    assert (await other.salt("acme")) == (await audience_store.salt("acme"))
