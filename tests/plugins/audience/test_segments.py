"""Segments: the SQL compiled from the filter DSL counts exactly what an independent Python
reading of the same rules counts, on random contacts and random filters, on both engines;
values are bound parameters; invalid filters are refused naming the part at fault."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa
from gateway_plugins.audience import schema
from gateway_plugins.audience.segments import SegmentError, compile_filter
from gateway_plugins.audience.store import AudienceStore
from sqlalchemy.dialects import postgresql, sqlite

from tests.plugins.audience.segment_oracle import Person, matches, random_filter

CONTACTS = 50_000
FILTERS = 30


async def populate(
    store: AudienceStore, tenant: str, count: int, seed: int
) -> list[tuple[int, Person]]:
    rng = random.Random(seed)
    lists = [
        (await store.create_list(tenant, f"L{i}", opt_in="single", visibility="public")).id
        for i in range(4)
    ]
    topics = [
        (await store.create_topic(tenant, f"T{i}", default_frequency="weekly")).id for i in range(4)
    ]
    people = [Person(i, rng, lists, topics) for i in range(count)]
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(schema.contacts), [p.row(tenant) for p in people])
        ids = (
            (
                await conn.execute(
                    sa.select(schema.contacts.c.id)
                    .where(schema.contacts.c.tenant == tenant)
                    .order_by(schema.contacts.c.id)
                )
            )
            .scalars()
            .all()
        )
        subscriptions = [
            {
                "tenant": tenant,
                "list_id": list_id,
                "contact_id": cid,
                "status": status,
                "source": "api",
                "created_at": 0.0,
                "updated_at": 0.0,
            }
            for cid, p in zip(ids, people, strict=True)
            for list_id, status in p.lists.items()
        ]
        preferences = [
            {
                "tenant": tenant,
                "topic_id": topic_id,
                "contact_id": cid,
                "subscribed": on,
                "frequency": "weekly",
                "updated_at": 0.0,
            }
            for cid, p in zip(ids, people, strict=True)
            for topic_id, on in p.topics.items()
        ]
        await conn.execute(sa.insert(schema.subscriptions), subscriptions)
        await conn.execute(sa.insert(schema.topic_preferences), preferences)
    await store.analyze()  # as an import does
    return list(zip(ids, people, strict=True))


async def test_counts_equal_an_independent_recomputation(audience_store: AudienceStore) -> None:
    people = await populate(audience_store, "acme", CONTACTS, seed=21)
    await populate(audience_store, "globex", 200, seed=22)  # never counted for acme
    lists = [m.id for m in await audience_store.list_lists("acme")]
    topics = [t.id for t in await audience_store.list_topics("acme")]
    rng = random.Random(2101)
    nonzero = 0
    for _ in range(FILTERS):
        tree = random_filter(rng, lists, topics)
        hits = [(cid, p) for cid, p in people if matches(p, tree)]
        expected = [cid for cid, _ in hits]
        assert await audience_store.count_matching("acme", tree) == len(expected), tree
        sample = await audience_store.sample_matching("acme", tree, limit=5)
        assert [c.id for c in sample] == expected[:5], tree
        narrowed = [cid for cid, p in hits if p.lists.get(lists[0]) == "active"]
        assert await audience_store.count_matching("acme", tree, lists[0]) == len(narrowed), tree
        nonzero += 0 < len(expected) < CONTACTS
    assert nonzero >= FILTERS // 3, "the random filters should mostly select something"


def test_values_are_bound_parameters_never_pasted() -> None:
    hostile = "x'; DROP TABLE audience_contacts; --"
    tree = {
        "any": [
            {"field": "name", "op": "eq", "value": hostile},
            {"field": "attributes.plan", "op": "contains", "value": hostile},
            {"field": "attributes.tags", "op": "in", "value": [hostile]},
        ]
    }
    where = compile_filter("acme", tree)
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        sql = str(sa.select(schema.contacts.c.id).where(where).compile(dialect=dialect))
        assert "DROP TABLE" not in sql


@pytest.mark.parametrize(
    ("tree", "path"),
    [
        ({"field": "password", "op": "eq", "value": "x"}, "filter.field"),
        ({"field": "attributes.a-b", "op": "eq", "value": "x"}, "filter.field"),
        ({"all": [{"field": "name", "op": "like", "value": "x"}]}, "filter.all[0].op"),
        ({"any": []}, "filter"),
        ({"field": "name", "op": "eq"}, "filter.value"),
        ({"field": "status", "op": "eq", "value": "vip"}, "filter.value"),
        ({"field": "attributes.n", "op": "gt", "value": "a"}, "filter.value"),
        ({"field": "list", "op": "gt", "value": 1}, "filter.op"),
        ({"field": "list", "op": "eq", "value": "1"}, "filter.value"),
        ({"field": "created_at", "op": "gt", "value": "yesterday"}, "filter.value"),
        ({"field": "name", "op": "in", "value": []}, "filter.value"),
        ({"field": "name", "op": "eq", "value": "x", "extra": 1}, "filter.extra"),
        ([1], "filter"),
    ],
)
def test_invalid_filters_name_the_part_at_fault(tree: object, path: str) -> None:
    with pytest.raises(SegmentError) as refused:
        compile_filter("acme", tree)
    assert refused.value.path == path
