"""The operator console in a real headless browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import smtplib
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import Sink, make_config, wait_until
from tests.ops.conftest import ADMIN_KEY, OPS_CONFIG, ops_config_args

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def send(port: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        for n in range(count):
            client.sendmail(
                "app@acme.test",
                [f"r{n}@example.org"],
                f"From: app@acme.test\r\nSubject: {n}\r\n\r\nx\r\n",
            )


def test_console_loads_shows_live_numbers_and_is_screenshotted(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is missing: run scripts/test.sh (it installs Debian's chromium)")
    gateway = gateway_factory(make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port)))
    url = f"http://127.0.0.1:{gateway.gateway.http_port}/console"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="gateway console"')
    send(gateway.port("dev"), 3)
    wait_until(lambda: len(sink.messages) == 3, 20, "three messages delivered")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(
                http_credentials={"username": "ops", "password": ADMIN_KEY},
                viewport={"width": 1200, "height": 1100},
            )
            page = context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on(
                "response",
                lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            response = page.goto(url)
            assert response is not None and response.status == 200
            assert page.title() == "Gateway console"
            wait_until(
                lambda: page.text_content("[data-stat=delivered]") == "3", 20, "3 delivered shown"
            )
            assert page.text_content("#ready") == "ready"
            assert "relay" in (page.text_content("#routes") or "")
            assert page.text_content("[data-queue=delivered]") == "3"
            # Live: new traffic shows up without reloading the page.
            refreshes = int(page.evaluate("document.body.dataset.refreshes || 0"))
            send(gateway.port("dev"), 2)
            # (Polled from here: the page's CSP forbids the eval wait_for_function uses.)
            wait_until(
                lambda: page.text_content("[data-stat=delivered]") == "5", 20, "the page to update"
            )
            assert int(page.evaluate("document.body.dataset.refreshes")) > refreshes
            assert page.text_content("[data-queue=delivered]") == "5"
            events = page.text_content("#events") or ""
            assert "delivered" in events and "r1@example.org" in events
            assert errors == [], errors
            assert failed == [], failed  # the favicon included
            shot = tmp_path / "console.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    if os.environ.get("GATEWAY_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_docs_page_renders_offline_from_the_packaged_swagger_ui(
    tmp_path: Path, sink: Sink, gateway_factory
) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is missing: run scripts/test.sh (it installs Debian's chromium)")
    gateway = gateway_factory(make_config(tmp_path, OPS_CONFIG, **ops_config_args(sink.port)))
    base = f"http://127.0.0.1:{gateway.gateway.http_port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_context().new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            off_site: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(base) else off_site.append(r.url))
            assert (page.goto(f"{base}/docs") or pytest.fail("no response")).status == 200
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "ESP gateway API" in (page.text_content(".swagger-ui .info .title") or "")
            assert page.locator(".opblock").count() >= 20
        finally:
            browser.close()
    assert errors == [] and off_site == [], (errors, off_site)
