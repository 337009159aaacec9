"""The third-party path: ``tests/example_plugin`` is a separate package, installed into the
venv by ``scripts/test.sh``; the gateway finds it through the ``gateway`` entry-point group
alone, and its header reaches the real sink."""

from __future__ import annotations

import importlib.metadata
import smtplib

from gateway.clock import FakeClock
from gateway.plugin_manager import describe_plugins, make_plugin_manager
from tests.conftest import RELAY_TO_SINK, Sink, make_config
from tests.integration.test_cli import gateway_cli, write_config

DIST = "gateway-example-header"

RELAY = (
    RELAY_TO_SINK
    + """
[plugins.example_header]
name = "X-Campaign-Platform"
value = "newsletter-2"
"""
)


def installed_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError(
            f"{DIST} is not installed: scripts/test.sh installs it "
            "(pip install -e tests/example_plugin)"
        ) from None


def test_the_entry_point_is_loaded_with_its_version() -> None:
    version = installed_version()
    pm = make_plugin_manager()
    plugin = pm.get_plugin("example_header")
    assert plugin is not None and plugin.__name__ == "gateway_example_header"
    rows = {name: (v, hooks) for name, v, hooks in describe_plugins(pm)}
    assert rows["example_header"] == (version, ["gateway_configure", "gateway_transform"])
    # Registered after the built-ins, so called before them: DKIM still signs its header.
    assert next(name for name, _, _ in describe_plugins(pm)) == "example_header"


def test_its_header_reaches_the_sink(tmp_path, sink: Sink, gateway_factory) -> None:
    installed_version()
    config = make_config(tmp_path, RELAY, port=sink.port)
    gw = gateway_factory(config, clock=FakeClock(), deliver=False)
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail(
            "a@example.com", ["b@example.org"], b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
        )
    gw.call(gw.gateway.dispatcher.run_once())
    (received,) = sink.messages
    assert received.data.startswith(b"X-Campaign-Platform: newsletter-2\r\nReceived: ")


def test_it_can_be_switched_off_and_gateway_plugins_lists_it(tmp_path) -> None:
    version = installed_version()
    listed = gateway_cli("-c", str(write_config(tmp_path, "")), "plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"example_header ({version})\n    gateway_configure\n    gateway_transform\n" in (
        listed.stdout
    )
    off = make_plugin_manager(tables={"example_header": {"enabled": False}})
    assert off.get_plugin("example_header") is None
