"""Fixtures for the automation plugin: the audience's gateway (SQLite and PostgreSQL, a
per-test schema) with ``[plugins.automation]`` on, polling often so tests wait little."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.plugins.audience.conftest import (  # noqa: F401 (fixtures)
    AudienceGateway,
    audience_db,
    receiver,
)
from tests.plugins.audience.conftest import audience_gateway as audience_gateway

AUTOMATION = "[plugins.automation]\npoll_interval = 0.05\n"


@pytest.fixture
def automation_gateway(
    audience_gateway: Callable[..., AudienceGateway],
) -> Callable[..., AudienceGateway]:
    def factory(extra: str = "") -> AudienceGateway:
        return audience_gateway(AUTOMATION + extra)

    return factory
