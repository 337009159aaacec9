"""Hosted pages over plain HTTP on both engines: signup with double opt-in where only the POST
of the page confirms, consent evidence without raw identifiers, tampered and expired links,
the honeypot, the per-IP limit, the daily cap on confirmation mails, unsubscribe by list, and
a second language."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from gateway_plugins.audience.page_tokens import PageTokens

from tests.conftest import Sink, wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.audience.pages_env import KEY, links_to, pages_toml

ANN = "ann.page@example.org"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_double_opt_in_confirms_only_on_post(
    audience_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    running = audience_gateway(pages_toml())
    acme = running.client()
    news = acme.post(
        "/v1/lists", json={"name": "Acme News", "opt_in": "double", "visibility": "public"}
    ).json()
    private = acme.post("/v1/lists", json={"name": "Internal"}).json()
    web = httpx.Client(base_url=running.url, timeout=30)
    signup_url = f"/p/acme/lists/{news['id']}/signup"
    form = web.get(signup_url)
    assert form.status_code == 200 and 'name="website"' in form.text and "Acme News" in form.text
    assert web.get(f"/p/acme/lists/{private['id']}/signup").status_code == 404
    assert web.get(f"/p/globex/lists/{news['id']}/signup").status_code == 404

    bad = web.post(signup_url, data={"email": "nope", "website": ""})
    assert bad.status_code == 422 and "valid email" in bad.text
    done = web.post(
        signup_url,
        data={"email": ANN, "name": "Ann", "website": ""},
        headers={"user-agent": "PageTest/1.0"},
    )
    assert done.status_code == 200 and "Check your inbox" in done.text
    wait_until(lambda: len(links_to(sink, ANN)) == 1, 20, "the confirmation mail")
    [link] = links_to(sink, ANN)
    path = "/p/" + link.split("/p/", 1)[1]
    contact = acme.post(
        "/v1/segments/preview", json={"filter": {"field": "email", "op": "eq", "value": ANN}}
    ).json()["sample"][0]

    def status() -> str:
        timeline = acme.get(f"/v1/contacts/{contact['id']}/timeline").json()
        return str(timeline["subscriptions"][0]["status"])

    page = web.get(path)  # what a link scanner does
    assert page.status_code == 200 and "Confirm" in page.text
    assert status() == "pending"
    assert web.post(path, data={}).status_code == 403
    assert status() == "pending"
    confirmed = web.post(path, data={"csrf": csrf_of(page)}, headers={"user-agent": "PageTest/1.0"})
    assert confirmed.status_code == 200 and "confirmed" in confirmed.text
    assert status() == "active"

    timeline = acme.get(f"/v1/contacts/{contact['id']}/timeline").json()
    consent = [e for e in timeline["entries"] if e["kind"].startswith("consent.")]
    assert sorted(e["kind"] for e in consent) == ["consent.confirm", "consent.subscribe"]
    for entry in consent:
        detail = entry["detail"]
        assert detail["method"] == "form" and detail["form_id"] == f"signup:{news['id']}"
        assert re.fullmatch(r"[0-9a-f]{64}", detail["ip_hash"])
        assert re.fullmatch(r"[0-9a-f]{64}", detail["user_agent_hash"])
    assert "127.0.0.1" not in str(timeline) and "PageTest" not in str(timeline)

    # Tampered links are refused; an expired one offers a fresh link by mail.
    token = path.rsplit("/", 1)[1]
    tampered = path[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert web.get(tampered).status_code == 400
    running.clock.advance(15 * 86400)
    expired = web.get(path)
    assert expired.status_code == 410 and "Send me a new link" in expired.text
    fresh_token = re.search(r'name="token" value="([^"]+)"', expired.text)
    assert fresh_token is not None
    sent = web.post("/p/fresh-link", data={"token": fresh_token.group(1)})
    assert sent.status_code == 200
    wait_until(lambda: len(links_to(sink, ANN)) == 2, 20, "a fresh link by mail")

    # Unsubscribe from this list only, by POST.
    tokens = PageTokens({"k1": KEY}, "k1")
    signed = tokens.sign("unsubscribe", "acme", contact["id"], news["id"], running.clock.now())
    unsub = f"/p/unsubscribe/{signed}"
    shown = web.get(unsub)
    assert shown.status_code == 200 and status() == "active"
    assert web.post(unsub, data={"csrf": csrf_of(shown)}).status_code == 200
    assert status() == "unsubscribed"
    web.close()


def test_honeypot_per_ip_limit_daily_cap_and_german(
    audience_gateway: Callable[..., AudienceGateway], sink: Sink
) -> None:
    running = audience_gateway(pages_toml())
    acme = running.client()
    news = acme.post(
        "/v1/lists", json={"name": "News", "opt_in": "double", "visibility": "public"}
    ).json()
    web = httpx.Client(
        base_url=running.url, timeout=30, headers={"accept-language": "de-DE,de;q=0.9"}
    )
    signup_url = f"/p/acme/lists/{news['id']}/signup"
    assert "E-Mail-Adresse" in web.get(signup_url).text
    bot = web.post(signup_url, data={"email": "bot@example.org", "website": "http://spam"})
    assert bot.status_code == 200 and "Postfach" in bot.text
    assert acme.get("/v1/contacts").json()["data"] == []
    for _ in range(4):  # 5 signups in all from this IP this hour; the 6th is refused
        assert web.post(signup_url, data={"email": "cap@example.org"}).status_code == 200
    assert web.post(signup_url, data={"email": "six@example.org"}).status_code == 429
    # At most 3 confirmation mails per address per day, however often it signs up.
    wait_until(lambda: len(links_to(sink, "cap@example.org")) == 3, 20, "three mails")
    running.clock.advance(3601)
    assert web.post(signup_url, data={"email": "cap@example.org"}).status_code == 200
    assert len(links_to(sink, "cap@example.org")) == 3
    web.close()
