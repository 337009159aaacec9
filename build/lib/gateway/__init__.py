"""A self-hosted ESP gateway: SMTP and HTTP in, durable spool, pluggable pipeline, many out."""

__version__ = "0.1.0"

__all__ = ["__version__"]
