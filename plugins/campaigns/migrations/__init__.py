"""Alembic migrations of the campaign tables (version table ``campaigns_alembic_version``)."""
