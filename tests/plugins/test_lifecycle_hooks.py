"""Lifecycle and registration hooks: gateway_startup and gateway_shutdown run once each, in
the gateway's event loop (async allowed); gateway_register_routes mounts a plugin's endpoint."""

from __future__ import annotations

import httpx
from litestar import get

from gateway.plugin_manager import hookimpl, make_plugin_manager
from tests.conftest import GatewayThread, make_config

CONFIG = """
[smtp]
listeners = [{ name = "dev", port = 0, tls = "none", insecure_auth = true }]

[http]
enabled = true
port = 0
"""


@get("/plugin/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "from a plugin"}


class Lifecycle:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    async def gateway_startup(self, gateway) -> None:
        self.calls.append("startup")

    @hookimpl
    def gateway_shutdown(self, gateway) -> None:
        self.calls.append("shutdown")

    @hookimpl
    def gateway_register_routes(self, gateway) -> list[object]:
        return [hello]


def test_startup_routes_and_shutdown(tmp_path) -> None:
    plugin = Lifecycle()
    pm = make_plugin_manager(builtins=(), entry_points=False)
    pm.register(plugin, name="lifecycle")
    gw = GatewayThread(make_config(tmp_path, CONFIG), deliver=False, plugin_manager=pm).start()
    try:
        assert plugin.calls == ["startup"]
        response = httpx.get(f"http://127.0.0.1:{gw.gateway.http_port}/plugin/hello")
        assert response.json() == {"hello": "from a plugin"}
    finally:
        gw.stop()
    assert plugin.calls == ["startup", "shutdown"]
