"""A scripted population for the shipped presets: a running gateway with tracking, the real
sink and the injectable clock; helpers to post events, open and click through the real
tracking URLs and unsubscribe with one click, and to read what each contact received."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import httpx

from tests.conftest import Sink, wait_until
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.tracking_env import BASE_URL, KEY1, html_of, parse

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TRACKING = f"""
[tracking]
base_url = "{BASE_URL}"
signing_key = "k1"
[tracking.keys]
k1 = "{KEY1}"
[tenants.acme.streams.marketing]
kind = "broadcast"
[plugins.click_tracking]
[plugins.open_pixel]
[plugins.list_unsubscribe]
"""
DAY = 86400.0
HOUR = 3600.0


def preset(name: str) -> dict[str, Any]:
    """A shipped preset, with its senders moved to the test tenant's domain."""
    text = (resources.files("gateway_plugins.automation") / "presets" / f"{name}.json").read_text()
    document: dict[str, Any] = json.loads(text)
    for step in document["steps"]:
        if step["type"] == "send":
            step["from"] = "shop@acme.test"
    return document


class Population:
    def __init__(self, running: AudienceGateway, sink: Sink) -> None:
        self.running = running
        self.sink = sink
        self.clock = running.clock
        self.start = running.clock.now()
        self.admin = running.client("acme", "admin")
        self.sender = running.client("acme", "sender")
        self.http = httpx.Client(base_url=running.url, timeout=30)
        self.contacts: dict[str, int] = {}
        self._n = 0

    def close(self) -> None:
        self.http.close()

    def create_flow(self, document: dict[str, Any]) -> int:
        answer = self.admin.post("/v1/flows", json=document)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def event(self, who: str, name: str, **properties: Any) -> dict[str, Any]:
        self._n += 1
        answer = self.sender.post(
            "/v1/events",
            json={
                "id": f"{who}-{name}-{self._n}",
                "name": name,
                "email": f"{who}@example.org",
                "properties": properties,
            },
        )
        assert answer.status_code == 202, answer.text
        self.contacts[who] = answer.json()["contact_id"]
        return dict(answer.json())

    def at(self, seconds: float) -> None:
        self.clock.set(self.start + seconds)

    def settle(self, total: int, what: str) -> None:
        """Wait for the sink to hold ``total`` mails and the flows to have nothing due."""
        try:
            wait_until(lambda: len(self.sink.messages) >= total, 10, what)
        except AssertionError:
            got = {r for m in self.sink.messages for r in m.rcpt_tos}
            first = next(w for w in self.contacts if f"{w}@example.org" not in got)
            found = self.admin.get("/v1/enrolments", params={"contact_id": self.contacts[first]})
            raise AssertionError(f"{what}: {len(self.sink.messages)} mails; {found.text}") from None
        assert len(self.sink.messages) == total, what

    def subjects(self, who: str) -> list[str]:
        return [str(parse(m.data)["Subject"]) for m in self.sink.to(f"{who}@example.org")]

    def latest(self, who: str) -> bytes:
        return self.sink.to(f"{who}@example.org")[-1].data

    def open(self, who: str) -> None:
        html = html_of(self.latest(who))
        (pixel,) = re.findall(r'src="(https://t\.example\.test/t/o/[^"]+)"', html)
        answer = self.http.get(pixel.removeprefix(BASE_URL), headers={"User-Agent": BROWSER})
        assert answer.status_code == 200

    def click(self, who: str) -> None:
        html = html_of(self.latest(who))
        links = re.findall(r'href="(https://t\.example\.test/t/c/[^"]+)"', html)
        answer = self.http.get(links[0].removeprefix(BASE_URL), headers={"User-Agent": BROWSER})
        assert answer.status_code == 302

    def unsubscribe(self, who: str) -> None:
        url = str(parse(self.latest(who))["List-Unsubscribe"]).strip("<>").split(">")[0]
        answer = self.http.post(url.removeprefix(BASE_URL), data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 200

    def states(self, who: str) -> list[tuple[str, str]]:
        found = self.admin.get("/v1/enrolments", params={"contact_id": self.contacts[who]})
        return [(e["state"], e["reason"]) for e in found.json()]

    def wait_states(self, who: str, expected: list[tuple[str, str]]) -> None:
        wait_until(lambda: self.states(who) == expected, 30, f"{who}: {expected}")
