"""Black-box: the four shipped presets, each for 50 contacts whose scripted behaviour (opens,
clicks through the real tracking URLs, goal events, one-click unsubscribes) covers every
branch, on a running gateway with a real sink and the injectable clock, on SQLite and
PostgreSQL. The sink receives exactly the expected mails, in order, at the expected times."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Sink
from tests.plugins.audience.conftest import AudienceGateway
from tests.plugins.automation.presets_env import DAY, HOUR, TRACKING, Population, preset

N = 50
PEOPLE = [f"p{i:02d}" for i in range(N)]


def group(k: int, of: int = 3) -> list[str]:
    return [p for i, p in enumerate(PEOPLE) if i % of == k]


@pytest.fixture
def population(
    automation_gateway: Callable[..., AudienceGateway], sink: Sink
) -> Iterator[Population]:
    people = Population(automation_gateway(TRACKING), sink)
    yield people
    people.close()


def test_welcome_series(population: Population) -> None:
    """On subscribing to the list (an audience event): welcome now, tips after 2 days, the
    offer after 5 unless an order came first; a one-click unsubscribe ends it."""
    p = population
    listed = p.admin.post("/v1/lists", json={"name": "News", "opt_in": "single"}).json()
    document = preset("welcome")
    document["trigger"]["event"] = "subscribed"  # the presets' "confirmed" is double opt-in
    document["list_id"] = listed["id"]
    p.create_flow(document)
    for who in PEOPLE:
        answer = p.admin.post(
            f"/v1/lists/{listed['id']}/subscriptions", json={"email": f"{who}@example.org"}
        )
        assert answer.status_code == 200, answer.text
        p.contacts[who] = answer.json()["contact_id"]
    p.settle(N, "the welcome mails")
    p.at(HOUR)
    for who in group(2):
        p.unsubscribe(who)
    p.at(2 * DAY)
    p.settle(N + len(group(0)) + len(group(1)), "the tips")
    p.at(3 * DAY)
    for who in group(1):
        p.event(who, "order_placed", total=30)
    p.at(5 * DAY)
    p.settle(N + 2 * len(group(0)) + len(group(1)), "the offers")
    for who in group(0):
        assert p.subjects(who) == [
            "Welcome, friend",
            "Three tips to get started",
            "A welcome offer for you",
        ]
        p.wait_states(who, [("completed", "completed")])
    for who in group(1):
        assert p.subjects(who) == ["Welcome, friend", "Three tips to get started"]
        assert p.states(who) == [("goal", "goal:order_placed")]
    for who in group(2):
        assert p.subjects(who) == ["Welcome, friend"]
        assert p.states(who) == [("exited", "not_subscribed")]


def test_abandoned_cart(population: Population) -> None:
    """A reminder after 1 h and another 24 h later; an order ends it wherever it is; a
    second abandoned cart while one runs starts nothing."""
    p = population
    p.create_flow(preset("abandoned_cart"))
    for who in PEOPLE:
        assert p.event(who, "cart_abandoned", total=20, cart_url=f"https://shop.test/{who}")[
            "enrolled"
        ]
    for who in group(2):
        p.at(HOUR / 2)
        assert p.event(who, "order_placed")["goals"]
    p.at(HOUR)
    reminded = len(group(0)) + len(group(1))
    p.settle(reminded, "the reminders")
    p.at(2 * HOUR)
    for who in group(1):
        assert p.event(who, "order_placed")["goals"]
    for who in group(0):
        assert not p.event(who, "cart_abandoned", total=5, cart_url="x")["enrolled"]
    p.at(25 * HOUR)
    p.settle(reminded + len(group(0)), "the last calls")
    for who in group(0):
        assert p.subjects(who) == [
            "You left something in your cart",
            "Your cart is about to expire",
        ]
        assert f"https://shop.test/{who}" in p.latest(who).decode()
        p.wait_states(who, [("completed", "completed")])
    for who in group(1):
        assert p.subjects(who) == ["You left something in your cart"]
    for who in group(2):
        assert p.subjects(who) == []
        assert p.states(who) == [("goal", "goal:order_placed")]


def test_re_engagement(population: Population) -> None:
    """No human open or click for 30 days: two mails a week apart, then off the list if still
    silent. An open (a real pixel fetch) restarts the 30 days; a click ends it."""
    p = population
    listed = p.admin.post("/v1/lists", json={"name": "News", "opt_in": "single"}).json()
    document = preset("re_engagement")
    document["list_id"] = listed["id"]
    document["steps"][-1]["unsubscribe_list"] = listed["id"]
    p.create_flow(document)
    for who in PEOPLE:
        p.admin.post(
            f"/v1/lists/{listed['id']}/subscriptions", json={"email": f"{who}@example.org"}
        )
        assert p.event(who, "opened")["enrolled"]  # their last open, from before
    p.at(30 * DAY)
    p.settle(N, "we miss you")
    p.at(31 * DAY)
    for who in group(1):
        p.open(who)
    p.at(37 * DAY)
    p.settle(N + len(group(0)) + len(group(2)), "the last chance")
    p.at(38 * DAY)
    for who in group(2):
        p.click(who)
    p.at(44 * DAY)
    for who in group(0):
        p.wait_states(who, [("completed", "completed")])
        timeline = p.admin.get(f"/v1/contacts/{p.contacts[who]}/timeline").json()
        subscriptions = timeline["subscriptions"]
        assert [s["status"] for s in subscriptions] == ["unsubscribed"]
        assert p.subjects(who) == ["We miss you", "Should we stop writing?"]
    for who in group(1):
        assert p.subjects(who) == ["We miss you"]
        assert [s for s, _ in p.states(who)] == ["goal", "active"]  # restarted by the open
    for who in group(2):
        assert p.subjects(who) == ["We miss you", "Should we stop writing?"]
        assert p.states(who)[0] == ("goal", "goal:clicked")
    p.settle(N + len(group(0)) + len(group(2)), "nothing more")


def test_win_back(population: Population) -> None:
    """90 days after the last order: an offer, and a reminder 14 days later; a new order
    restarts the 90 days."""
    p = population
    p.create_flow(preset("win_back"))
    for who in PEOPLE:
        assert p.event(who, "order_placed", total=40)["enrolled"]
    p.at(50 * DAY)
    for who in group(1):
        assert p.event(who, "order_placed", total=10)["goals"]
    p.at(90 * DAY)
    p.settle(len(group(0)) + len(group(2)), "the first win-back mails")
    p.at(95 * DAY)
    for who in group(2):
        p.event(who, "order_placed", total=10)
    p.at(104 * DAY)
    p.settle(2 * len(group(0)) + len(group(2)), "the reminders")
    for who in group(0):
        assert p.subjects(who) == [
            "We have not seen you in a while",
            "Your 15% off ends soon",
        ]
    for who in group(1):
        assert p.subjects(who) == []
        assert [s for s, _ in p.states(who)] == ["goal", "active"]
    for who in group(2):
        assert p.subjects(who) == ["We have not seen you in a while"]
    p.at(140 * DAY)  # group 1's 90 days, counted from their second order
    p.settle(2 * len(group(0)) + len(group(2)) + len(group(1)), "group 1's first mail")
