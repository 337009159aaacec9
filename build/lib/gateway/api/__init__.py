"""The HTTP API (litestar): ``create_app(gateway)`` and the controllers it mounts."""
