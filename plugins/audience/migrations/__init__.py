"""Alembic migrations of the audience tables (run by ``gateway_plugins.audience.engine``)."""
