"""``TemplateStore``: every read and write of the template tables, per tenant.

A template's versions are immutable: a change is a new version (``latest_version`` + 1, in the
same transaction), so a campaign that names a version sends exactly what was reviewed.
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from gateway_plugins.audience.store import Conflict, NotFound
from gateway_plugins.campaigns import schema
from gateway_plugins.campaigns.html_text import text_from_html
from gateway_plugins.campaigns.template_model import (
    StoredTemplate,
    TemplateContent,
    TemplateVersion,
    Variable,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.clock import Clock

__all__ = ["Conflict", "NotFound", "TemplateStore"]


class TemplateStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def create(
        self, tenant: str, name: str, content: TemplateContent, description: str = ""
    ) -> tuple[StoredTemplate, TemplateVersion]:
        """A new template with ``content`` as version 1; ``Conflict`` if the name is taken."""
        now = self.clock.now()
        try:
            async with self.engine.begin() as conn:
                template_id = (
                    await conn.execute(
                        sa.insert(schema.templates)
                        .values(
                            tenant=tenant,
                            name=name,
                            description=description,
                            latest_version=1,
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(schema.templates.c.id)
                    )
                ).scalar_one()
                version = await self._insert_version(conn, tenant, template_id, 1, content, now)
                template = await self._template(conn, tenant, template_id)
        except IntegrityError:
            raise Conflict(f"a template named {name!r} exists") from None
        return template, version

    async def add_version(
        self, tenant: str, template_id: int, content: TemplateContent
    ) -> TemplateVersion:
        """``content`` as the template's next version."""
        now = self.clock.now()
        table = schema.templates
        async with self.engine.begin() as conn:
            # The UPDATE takes the row lock first, so concurrent saves get consecutive numbers.
            number = (
                await conn.execute(
                    sa.update(table)
                    .where(table.c.tenant == tenant, table.c.id == template_id)
                    .values(latest_version=table.c.latest_version + 1, updated_at=now)
                    .returning(table.c.latest_version)
                )
            ).scalar_one_or_none()
            if number is None:
                raise NotFound("template", template_id)
            return await self._insert_version(conn, tenant, template_id, number, content, now)

    async def update(
        self,
        tenant: str,
        template_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> StoredTemplate:
        values: dict[str, Any] = {"updated_at": self.clock.now()}
        if name is not None:
            values["name"] = name
        if description is not None:
            values["description"] = description
        table = schema.templates
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    sa.update(table)
                    .where(table.c.tenant == tenant, table.c.id == template_id)
                    .values(**values)
                )
                if result.rowcount == 0:
                    raise NotFound("template", template_id)
                return await self._template(conn, tenant, template_id)
        except IntegrityError:
            raise Conflict(f"a template named {name!r} exists") from None

    async def delete(self, tenant: str, template_id: int) -> None:
        table = schema.templates
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(schema.template_versions).where(
                    schema.template_versions.c.tenant == tenant,
                    schema.template_versions.c.template_id == template_id,
                )
            )
            result = await conn.execute(
                sa.delete(table).where(table.c.tenant == tenant, table.c.id == template_id)
            )
            if result.rowcount == 0:
                raise NotFound("template", template_id)

    async def get(self, tenant: str, template_id: int) -> StoredTemplate:
        async with self.engine.connect() as conn:
            return await self._template(conn, tenant, template_id)

    async def list_templates(
        self, tenant: str, *, after: int = 0, limit: int = 100
    ) -> list[StoredTemplate]:
        table = schema.templates
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(table)
                .where(table.c.tenant == tenant, table.c.id > after)
                .order_by(table.c.id)
                .limit(limit)
            )
            return [_template(r) for r in rows.mappings()]

    async def version(
        self, tenant: str, template_id: int, version: int | None = None
    ) -> TemplateVersion:
        """One version; ``None``: the latest."""
        async with self.engine.connect() as conn:
            if version is None:
                version = (await self._template(conn, tenant, template_id)).latest_version
            table = schema.template_versions
            row = (
                (
                    await conn.execute(
                        sa.select(table).where(
                            table.c.tenant == tenant,
                            table.c.template_id == template_id,
                            table.c.version == version,
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound("template version", f"{template_id}/{version}")
        return _version(row)

    async def versions(self, tenant: str, template_id: int) -> list[TemplateVersion]:
        """Every version, newest first."""
        table = schema.template_versions
        async with self.engine.connect() as conn:
            await self._template(conn, tenant, template_id)
            rows = await conn.execute(
                sa.select(table)
                .where(table.c.tenant == tenant, table.c.template_id == template_id)
                .order_by(table.c.version.desc())
            )
            return [_version(r) for r in rows.mappings()]

    async def _template(
        self, conn: AsyncConnection, tenant: str, template_id: int
    ) -> StoredTemplate:
        table = schema.templates
        row = (
            (
                await conn.execute(
                    sa.select(table).where(table.c.tenant == tenant, table.c.id == template_id)
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound("template", template_id)
        return _template(row)

    async def _insert_version(
        self,
        conn: AsyncConnection,
        tenant: str,
        template_id: int,
        number: int,
        content: TemplateContent,
        now: float,
    ) -> TemplateVersion:
        derived = content.text is None
        text = text_from_html(content.html) if content.text is None else content.text
        values = {
            "tenant": tenant,
            "template_id": template_id,
            "version": number,
            "subject": content.subject,
            "preheader": content.preheader,
            "html": content.html,
            "text": text,
            "text_derived": derived,
            "variables": msgspec.to_builtins(content.variables),
            "created_at": now,
        }
        row_id = (
            await conn.execute(
                sa.insert(schema.template_versions)
                .values(**values)
                .returning(schema.template_versions.c.id)
            )
        ).scalar_one()
        return _version({**values, "id": row_id})


def _template(row: Any) -> StoredTemplate:
    return StoredTemplate(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        description=row["description"],
        latest_version=row["latest_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _version(row: Any) -> TemplateVersion:
    return TemplateVersion(
        id=row["id"],
        tenant=row["tenant"],
        template_id=row["template_id"],
        version=row["version"],
        subject=row["subject"],
        preheader=row["preheader"],
        html=row["html"],
        text=row["text"],
        text_derived=bool(row["text_derived"]),
        variables=msgspec.convert(row["variables"], list[Variable]),
        created_at=row["created_at"],
    )
