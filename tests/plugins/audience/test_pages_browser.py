"""The hosted pages in a real headless browser (Debian's chromium through Playwright), on
both engines: signup form → confirmation mail at the sink → a plain GET of its link leaves the
contact pending → clicking Confirm activates it; a topic switched off in the preference
center is off through the API; axe-core finds nothing serious or critical on any page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from gateway_plugins.audience.page_tokens import PageTokens
from playwright.sync_api import sync_playwright

from tests.conftest import Sink, wait_until
from tests.ops.test_console import ARGS, CHROMIUM
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.audience.pages_env import KEY, links_to, pages_toml, serious_violations

ADDRESS = "browser.user@example.org"


def test_signup_and_confirm_in_chromium(
    audience_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail("chromium is missing: run scripts/test.sh (it installs Debian's chromium)")
    running = audience_gateway(pages_toml())
    acme = running.client()
    news = acme.post(
        "/v1/lists", json={"name": "Acme News", "opt_in": "double", "visibility": "public"}
    ).json()
    tips = acme.post("/v1/topics", json={"name": "Tips", "default_frequency": "weekly"}).json()

    def subscription() -> str:
        found = acme.post(
            "/v1/segments/preview",
            json={"filter": {"field": "email", "op": "eq", "value": ADDRESS}},
        ).json()["sample"]
        if not found:
            return "none"
        timeline = acme.get(f"/v1/contacts/{found[0]['id']}/timeline").json()
        return str(timeline["subscriptions"][0]["status"])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_context().new_page()
            response = page.goto(f"{running.url}/p/acme/lists/{news['id']}/signup")
            assert response is not None and response.status == 200
            assert serious_violations(page) == []
            page.get_by_label("Email address").fill(ADDRESS)
            page.get_by_label("Name (optional)").fill("Browser User")
            page.get_by_role("button", name="Subscribe").click()
            page.wait_for_load_state()
            assert "Check your inbox" in page.content()
            assert serious_violations(page) == []
            wait_until(lambda: len(links_to(sink, ADDRESS)) == 1, 20, "the confirmation mail")
            [link] = links_to(sink, ADDRESS)
            local = running.url + "/p/" + link.split("/p/", 1)[1]
            assert httpx.get(local).status_code == 200  # a scanner's GET
            assert subscription() == "pending"
            page.goto(local)
            assert subscription() == "pending"
            assert serious_violations(page) == []
            page.get_by_role("button", name="Confirm").click()
            page.wait_for_load_state()
            assert "your subscription is confirmed" in page.content()
            assert subscription() == "active"
            assert serious_violations(page) == []

            # The preference center: a topic switched off shows as off through the API.
            contact_id = acme.post(
                "/v1/segments/preview",
                json={"filter": {"field": "email", "op": "eq", "value": ADDRESS}},
            ).json()["sample"][0]["id"]
            acme.put(f"/v1/topics/{tips['id']}/contacts/{contact_id}", json={"subscribed": True})
            tokens = PageTokens({"k1": KEY}, "k1")
            signed = tokens.sign("preferences", "acme", contact_id, news["id"], running.clock.now())
            page.goto(f"{running.url}/p/preferences/{signed}")
            assert serious_violations(page) == []
            tips_box = page.get_by_role("checkbox", name="Tips")
            assert tips_box.is_checked()
            tips_box.uncheck()
            page.get_by_label("Name", exact=True).fill("Renamed User")
            page.get_by_role("button", name="Save").click()
            page.wait_for_load_state()
            assert "Your preferences are saved." in page.content()
            assert serious_violations(page) == []
            unsubscribe = tokens.sign(
                "unsubscribe", "acme", contact_id, news["id"], running.clock.now()
            )
            page.goto(f"{running.url}/p/unsubscribe/{unsubscribe}")
            assert serious_violations(page) == []
            timeline = acme.get(f"/v1/contacts/{contact_id}/timeline").json()
            assert [(t["topic_id"], t["subscribed"]) for t in timeline["topics"]] == [
                (tips["id"], False)
            ]
            assert timeline["contact"]["name"] == "Renamed User"
            assert subscription() == "active"  # the list was left as it was
        finally:
            browser.close()
