"""The template tables on both engines: migrations match the schema, versions are numbered
and immutable, text is derived from HTML when absent, tenants never see each other's."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from gateway_plugins.audience.engine import current_revision, head_revision
from gateway_plugins.campaigns.engine import MIGRATIONS, migrate_campaigns
from gateway_plugins.campaigns.schema import metadata
from gateway_plugins.campaigns.template_model import TemplateContent, Variable
from gateway_plugins.campaigns.template_store import Conflict, NotFound, TemplateStore


async def test_migrations_build_the_schema_and_are_idempotent(
    template_store: TemplateStore,
) -> None:
    engine = template_store.engine
    await migrate_campaigns(engine)  # current already: a no-op
    async with engine.connect() as conn:
        assert await conn.run_sync(current_revision, MIGRATIONS) == head_revision(MIGRATIONS)
        assert await conn.run_sync(current_revision) == head_revision()  # the audience's

        def differences(sync: sa.Connection) -> list[object]:
            context = MigrationContext.configure(sync, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
            # only our tables: the audience's belong to its own metadata
            return [d for d in diff if "campaign_" in repr(d)]

        assert await conn.run_sync(differences) == []


async def test_versions_are_numbered_immutable_and_per_tenant(
    template_store: TemplateStore,
) -> None:
    store = template_store
    content = TemplateContent(
        subject="Hello {{ contact.first_name | default('there') }}",
        html="<p>Hi <a href='https://example.com/{{ code }}'>offer</a></p>",
        variables=[Variable(name="code", required=True)],
    )
    template, first = await store.create("acme", "welcome", content, "the first mail")
    assert (template.latest_version, first.version) == (1, 1)
    assert first.text_derived and first.text == "Hi offer (https://example.com/{{ code }})\n"
    with pytest.raises(Conflict):
        await store.create("acme", "welcome", content)
    other, _ = await store.create("globex", "welcome", content)  # names are per tenant

    given = TemplateContent(subject="v2", html="<p>two</p>", text="two, by hand")
    second = await store.add_version("acme", template.id, given)
    third = await store.add_version("acme", template.id, given)
    assert (second.version, third.version) == (2, 3)
    assert not second.text_derived and second.text == "two, by hand"
    assert (await store.version("acme", template.id)).version == 3
    kept = await store.version("acme", template.id, 1)
    assert kept.subject == content.subject and kept.variables == content.variables
    assert [v.version for v in await store.versions("acme", template.id)] == [3, 2, 1]

    for call in (
        store.get("globex", template.id),
        store.version("globex", template.id, 1),
        store.add_version("globex", template.id, given),
        store.delete("globex", template.id),
        store.version("acme", template.id, 4),
    ):
        with pytest.raises(NotFound):
            await call
    assert [t.name for t in await store.list_templates("acme")] == ["welcome"]
    renamed = await store.update("acme", template.id, name="hello", description="")
    assert renamed.name == "hello" and renamed.latest_version == 3
    await store.delete("acme", template.id)
    assert await store.list_templates("acme") == []
    assert (await store.get("globex", other.id)).name == "welcome"
