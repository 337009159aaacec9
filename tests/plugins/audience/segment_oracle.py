"""An independent reading of the segment DSL in plain Python, for checking the SQL: random
contacts and random filters, and ``matches(contact, filter)`` written from the documented
rules (docs/plugins/audience.md), not from the compiler."""

from __future__ import annotations

import random
from typing import Any

DOMAINS = ("example.org", "example.com", "Mail.Test")
NAMES = ("Ann", "Bob", "Cleo", "", "Dana Lee", "ann-marie")
LOCALES = ("en", "de", "fr", "")
STATUSES = ("active", "active", "active", "bounced", "complained")
PLANS = ("free", "pro", "team", "Pro")
TAGS = ("a", "b", "c", "vip")
BASE_TIME = 1_700_000_000.0


class Person:
    """A generated contact with its memberships."""

    def __init__(self, i: int, rng: random.Random, lists: list[int], topics: list[int]) -> None:
        self.email = f"user{i}@{rng.choice(DOMAINS)}"
        self.name = rng.choice(NAMES)
        self.locale = rng.choice(LOCALES)
        self.timezone = rng.choice(("Europe/Berlin", "UTC", ""))
        self.status = rng.choice(STATUSES)
        self.created_at = BASE_TIME + rng.randrange(0, 1_000_000)
        attributes: dict[str, Any] = {}
        if rng.random() < 0.7:
            attributes["plan"] = rng.choice(PLANS)
        if rng.random() < 0.6:
            attributes["seats"] = rng.randrange(0, 50)
        if rng.random() < 0.1:
            attributes["seats"] = str(rng.randrange(0, 50))  # a string: never a number match
        if rng.random() < 0.5:
            attributes["score"] = round(rng.uniform(-5, 5), 3)
        if rng.random() < 0.5:
            attributes["beta"] = rng.random() < 0.5
        if rng.random() < 0.5:
            attributes["tags"] = rng.sample(TAGS, rng.randrange(0, 4))
        self.attributes = attributes
        self.lists = {
            list_id: rng.choice(("active", "pending", "unsubscribed"))
            for list_id in lists
            if rng.random() < 0.5
        }
        self.topics = {topic_id: rng.random() < 0.5 for topic_id in topics if rng.random() < 0.6}

    def row(self, tenant: str) -> dict[str, Any]:
        return {
            "tenant": tenant,
            "email": self.email,
            "email_key": self.email.lower(),
            "name": self.name,
            "locale": self.locale,
            "timezone": self.timezone,
            "attributes": self.attributes,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        }


def random_condition(rng: random.Random, lists: list[int], topics: list[int]) -> dict[str, Any]:
    kind = rng.randrange(8)
    if kind == 0:
        field = rng.choice(("email", "name", "locale", "timezone"))
        op = rng.choice(("eq", "neq", "contains", "exists", "in", "nin"))
        pool = {
            "email": ["example.org", "USER1", "mail.test", "user7@example.com"],
            "name": [*NAMES, "lee"],
            "locale": list(LOCALES),
            "timezone": ["UTC", "Europe/Berlin", "europe"],
        }[field]
        return _with_value(rng, field, op, pool)
    if kind == 1:
        return _with_value(
            rng, "status", rng.choice(("eq", "neq", "in", "nin")), list(set(STATUSES))
        )
    if kind == 2:
        op = rng.choice(("gt", "gte", "lt", "lte"))
        return {"field": "created_at", "op": op, "value": BASE_TIME + rng.randrange(0, 1_000_000)}
    if kind == 3:
        field = rng.choice(("list", "topic"))
        ids = lists if field == "list" else topics
        op = rng.choice(("eq", "neq", "in", "nin"))
        value = rng.sample(ids, 2) if op in ("in", "nin") else rng.choice(ids)
        return {"field": field, "op": op, "value": value}
    if kind == 4:
        op = rng.choice(("eq", "neq", "in", "nin", "contains", "exists"))
        return _with_value(rng, "attributes.plan", op, [*PLANS, "pr"])
    if kind == 5:
        op = rng.choice(("eq", "neq", "gt", "gte", "lt", "lte", "in", "nin", "exists"))
        field = rng.choice(("attributes.seats", "attributes.score"))
        return _with_value(rng, field, op, [0, 3, 10, 25, 49, 1.5, -2.25])
    if kind == 6:
        op = rng.choice(("eq", "neq", "exists"))
        return _with_value(rng, "attributes.beta", op, [True, False])
    return _with_value(rng, "attributes.tags", rng.choice(("contains", "exists")), list(TAGS))


def _with_value(rng: random.Random, field: str, op: str, pool: list[Any]) -> dict[str, Any]:
    if op == "exists":
        value: Any = rng.random() < 0.5
    elif op in ("in", "nin"):
        value = rng.sample(pool, min(len(pool), rng.randrange(1, 4)))
    else:
        value = rng.choice(pool)
        if op == "contains" and not isinstance(value, str):
            value = str(value)
    return {"field": field, "op": op, "value": value}


def random_filter(
    rng: random.Random, lists: list[int], topics: list[int], depth: int = 0
) -> dict[str, Any]:
    if depth >= 2 or rng.random() < 0.35:
        return random_condition(rng, lists, topics)
    group = rng.choice(("all", "any"))
    return {
        group: [random_filter(rng, lists, topics, depth + 1) for _ in range(rng.randrange(1, 4))]
    }


# --- the oracle -------------------------------------------------------------------------------


def matches(person: Person, tree: dict[str, Any]) -> bool:
    if "all" in tree:
        return all(matches(person, child) for child in tree["all"])
    if "any" in tree:
        return any(matches(person, child) for child in tree["any"])
    field, op, value = tree["field"], tree["op"], tree["value"]
    if field in ("list", "topic"):
        ids = value if isinstance(value, list) else [value]
        if field == "list":
            member = any(person.lists.get(i) == "active" for i in ids)
        else:
            member = any(person.topics.get(i) is True for i in ids)
        return member if op in ("eq", "in") else not member
    if field == "created_at":
        return _order(person.created_at, op, value)
    if not field.startswith("attributes."):
        text = getattr(person, field)
        if op == "exists":
            return bool(text) == value
        if op == "contains":
            return value.lower() in text.lower()
        if op in ("in", "nin"):
            return (text in value) == (op == "in")
        return (text == value) == (op == "eq")
    name = field.removeprefix("attributes.")
    present = name in person.attributes
    attribute = person.attributes.get(name)
    if op == "exists":
        return present == value
    if op == "contains":
        if isinstance(attribute, str):
            return value.lower() in attribute.lower()
        return isinstance(attribute, list) and value in attribute
    if op in ("in", "nin"):
        hit = any(_same(attribute, present, v) for v in value)
        return hit == (op == "in")
    if op in ("eq", "neq"):
        return _same(attribute, present, value) == (op == "eq")
    return _kind(attribute) == "number" and present and _order(attribute, op, value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _same(attribute: Any, present: bool, value: Any) -> bool:
    return present and _kind(attribute) == _kind(value) and attribute == value


def _order(left: float, op: str, right: float) -> bool:
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]
