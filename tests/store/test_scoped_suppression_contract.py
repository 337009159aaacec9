"""Scoped suppression entries, the same on every engine: an address may be suppressed
tenant-wide and per stream at once; lookups take the scopes that apply, tenant-wide first."""

from __future__ import annotations

from gateway.store.base import TENANT_SCOPE, Store, Suppression, stream_scope
from tests.store.conftest import T0

NEWS = stream_scope("news")


def entry(address: str, reason: str = "unsubscribe", scope: str = TENANT_SCOPE) -> Suppression:
    return Suppression(
        tenant="default",
        address=address,
        reason=reason,
        created_at=T0,
        scope=scope,  # type: ignore[arg-type]
    )


async def test_a_stream_entry_stops_only_that_stream(store: Store) -> None:
    await store.add_suppressions([entry("Ann@Example.org", scope=NEWS)])
    assert await store.find_suppression("default", "ann@example.org") is None
    found = await store.find_suppression("default", "ANN@example.org", [TENANT_SCOPE, NEWS])
    assert found is not None and found.scope == NEWS and found.reason == "unsubscribe"
    other = [TENANT_SCOPE, stream_scope("offers")]
    assert await store.find_suppression("default", "ann@example.org", other) is None
    assert await store.suppressed("default", ["ann@example.org"]) == {}
    both = await store.suppressed("default", ["ann@example.org", "bob@example.org"], [NEWS])
    assert set(both) == {"ann@example.org"}


async def test_tenant_wide_entries_win_and_scopes_are_kept_apart(store: Store) -> None:
    await store.add_suppressions(
        [entry("ann@example.org", scope=NEWS), entry("ann@example.org", "complaint")]
    )
    found = await store.find_suppression("default", "ann@example.org", [TENANT_SCOPE, NEWS])
    assert found is not None and (found.scope, found.reason) == (TENANT_SCOPE, "complaint")
    listed = await store.list_suppressions("default")
    assert [(e.scope, e.reason) for e in listed] == [
        (TENANT_SCOPE, "complaint"),
        (NEWS, "unsubscribe"),
    ]
    assert [e.scope for e in await store.list_suppressions("default", scope=NEWS)] == [NEWS]
    # One scope removed, the other kept; then every scope of the address at once.
    assert await store.remove_suppression("default", "ann@example.org", TENANT_SCOPE)
    assert not await store.remove_suppression("default", "ann@example.org", TENANT_SCOPE)
    left = await store.find_suppression("default", "ann@example.org", [TENANT_SCOPE, NEWS])
    assert left is not None and left.scope == NEWS
    await store.add_suppressions([entry("ann@example.org", "manual")])
    await store.add_suppressions([entry("anna@example.org", "manual")])
    assert await store.remove_suppression("default", "ANN@example.org")
    assert [e.address for e in await store.list_suppressions("default")] == ["anna@example.org"]


async def test_paging_walks_every_scope_of_an_address(store: Store) -> None:
    await store.add_suppressions(
        [
            entry("a@example.org"),
            entry("a@example.org", scope=NEWS),
            entry("a@example.org", scope=stream_scope("offers")),
            entry("b@example.org"),
        ]
    )
    seen, after = [], None
    while True:
        page = await store.list_suppressions("default", after=after, limit=1)
        if not page:
            break
        seen.append((page[0].address, page[0].scope))
        after = page[0].key
    assert seen == [
        ("a@example.org", TENANT_SCOPE),
        ("a@example.org", "stream:news"),
        ("a@example.org", "stream:offers"),
        ("b@example.org", TENANT_SCOPE),
    ]
    # A bare address as the cursor (as before scopes) starts after its tenant-wide entry.
    rest = await store.list_suppressions("default", after="a@example.org")
    assert (rest[0].address, rest[0].scope) == ("a@example.org", "stream:news")
