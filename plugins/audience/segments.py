"""Segments: a JSON filter over a tenant's contacts, compiled to a SQLAlchemy expression.

A filter is a condition or a group::

    {"all": [ <filter>, ... ]}            every one holds (AND)
    {"any": [ <filter>, ... ]}            at least one holds (OR)
    {"field": F, "op": OP, "value": V}    one condition

Fields: ``email``, ``name``, ``locale``, ``timezone``, ``status``, ``created_at`` (Unix
seconds or an ISO 8601 time), ``attributes.<name>`` (names of letters, digits and ``_``),
``list`` (an active subscription to the list id or ids) and ``topic`` (opted in to the topic).
Operators: ``eq``, ``neq``, ``in``, ``nin``, ``gt``, ``gte``, ``lt``, ``lte``, ``exists``
(value ``true`` or ``false``), ``contains`` (a substring of a text, ignoring ASCII case, or an
element of a list attribute). An attribute condition only matches an attribute of the
value's JSON type: ``eq 3`` never matches the string ``"3"``; ``neq``/``nin`` hold for
contacts without it; ``gt``/``gte``/``lt``/``lte`` compare numbers only (text order would
depend on each database's collation). Text ``eq`` is exact (case-sensitive).

Every value becomes a bound parameter; field names are checked against the list above, never
pasted. Four constructs need dialect spellings — a JSON value's type, membership in a JSON
array, a type-guarded comparison and list/topic membership — and get them from SQLAlchemy's
compiler extension, so the filter compiles to one expression tree for both engines.

Speed (a count over a million contacts): SQLite runs a correlated ``EXISTS`` as one index
probe per contact, so membership there is ``id IN (SELECT …)``, one pass over the list
building a temporary set; PostgreSQL turns ``EXISTS`` into a (anti-)semi-join, and keeps it
(``NOT IN`` over a subquery too big for memory would be quadratic there). Inside a group the
conditions are ordered cheapest first (columns, then memberships, then JSON), so both engines
short-circuit before parsing attributes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from gateway_plugins.audience import schema
from gateway_plugins.audience.model import CONTACT_STATUSES
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FunctionElement

MAX_DEPTH = 6
MAX_CONDITIONS = 200
MAX_IN_VALUES = 1000
_ATTRIBUTE = re.compile(r"^attributes\.([A-Za-z0-9_]{1,64})$")
_TEXT_FIELDS = ("email", "name", "locale", "timezone", "status")
_ORDERING = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
OPS = ("eq", "neq", "in", "nin", "gt", "gte", "lt", "lte", "exists", "contains")


class SegmentError(ValueError):
    """The filter is not valid; ``path`` names the part (``all[2].value``)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


# --- two dialect-specific constructs --------------------------------------------------------


class json_type_is(FunctionElement[bool]):
    """``attributes.<key>`` exists and has this JSON type (string, number, boolean, array)."""

    type = sa.Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # SQLite: no "= 1" after it, which would hide an IN
    name = "json_type_is"


@compiles(json_type_is, "sqlite")
def _json_type_sqlite(element: json_type_is, compiler: Any, **kw: Any) -> str:
    column, path, kind = list(element.clauses)
    sqlite_types = {
        "string": "('text')",
        "number": "('integer', 'real')",
        "boolean": "('true', 'false')",
        "array": "('array')",
    }[kind.value]
    return (
        f"coalesce(json_type({compiler.process(column, **kw)}, "
        f"{compiler.process(path, **kw)}) IN {sqlite_types}, 0)"
    )


@compiles(json_type_is, "postgresql")
def _json_type_postgresql(element: json_type_is, compiler: Any, **kw: Any) -> str:
    column, path, kind = list(element.clauses)
    key = compiler.process(sa.literal(path.value.removeprefix('$."').removesuffix('"')), **kw)
    return (
        f"coalesce(jsonb_typeof({compiler.process(column, **kw)} -> {key}) = "
        f"{compiler.process(sa.literal(kind.value), **kw)}, false)"
    )


class json_array_has(FunctionElement[bool]):
    """The JSON array ``attributes.<key>`` has this string element."""

    type = sa.Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # SQLite: no "= 1" after it, which would hide an IN
    name = "json_array_has"


@compiles(json_array_has, "sqlite")
def _array_has_sqlite(element: json_array_has, compiler: Any, **kw: Any) -> str:
    column, path, value = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXISTS (SELECT 1 FROM json_each({column}, {path}) AS e WHERE e.value = {value})"


@compiles(json_array_has, "postgresql")
def _array_has_postgresql(element: json_array_has, compiler: Any, **kw: Any) -> str:
    column, path, value = list(element.clauses)
    key = compiler.process(sa.literal(path.value.removeprefix('$."').removesuffix('"')), **kw)
    return (
        f"coalesce(jsonb_exists({compiler.process(column, **kw)} -> {key}, "
        f"{compiler.process(value, **kw)}), false)"
    )


class guarded(FunctionElement[bool]):
    """``comparison`` where ``guard`` (a JSON type check) holds, else false — never NULL."""

    type = sa.Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # SQLite: no "= 1" after it, which would hide an IN
    name = "guarded"


@compiles(guarded, "sqlite")
def _guarded_sqlite(element: guarded, compiler: Any, **kw: Any) -> str:
    # SQLite evaluates AND left to right and stops early: the comparison (one JSON parse)
    # first, the type check only for the rows it matched.
    guard, comparison = (compiler.process(c, **kw) for c in element.clauses)
    return f"coalesce(({comparison}) AND ({guard}), 0)"


@compiles(guarded, "postgresql")
def _guarded_postgresql(element: guarded, compiler: Any, **kw: Any) -> str:
    # CASE, not AND: PostgreSQL may evaluate a cast before the type check beside it.
    guard, comparison = (compiler.process(c, **kw) for c in element.clauses)
    return f"CASE WHEN {guard} THEN {comparison} ELSE false END"


class member(FunctionElement[bool]):
    """The contact is in the set ``members`` selects (contact ids, none NULL); the same set as
    ``correlated``, an ``EXISTS`` over it for the current contact."""

    type = sa.Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # SQLite: no "= 1" after it, which would hide an IN
    name = "member"


@compiles(member, "sqlite")
def _member_sqlite(element: member, compiler: Any, **kw: Any) -> str:
    contact_id, members, _ = element.clauses
    return compiler.process(contact_id.in_(members), **kw)  # type: ignore[no-any-return]


@compiles(member, "postgresql")
def _member_postgresql(element: member, compiler: Any, **kw: Any) -> str:
    _, _, correlated = element.clauses
    return compiler.process(correlated, **kw)  # type: ignore[no-any-return]


# --- compiling ------------------------------------------------------------------------------


def compile_filter(tenant: str, tree: Any) -> ColumnElement[bool]:
    """The WHERE clause (over ``audience_contacts``) for a filter; raises
    :class:`SegmentError` naming the part at fault."""
    counter = [0]
    return _node(tenant, tree, "filter", 0, counter)


def _node(tenant: str, tree: Any, path: str, depth: int, counter: list[int]) -> ColumnElement[bool]:
    if depth > MAX_DEPTH:
        raise SegmentError(path, f"groups nest at most {MAX_DEPTH} deep")
    if not isinstance(tree, dict):
        raise SegmentError(path, "a condition or an all/any group (a JSON object)")
    for group, join in (("all", sa.and_), ("any", sa.or_)):
        if group in tree:
            if len(tree) != 1 or not isinstance(tree[group], list) or not tree[group]:
                raise SegmentError(path, f"'{group}' takes a non-empty list and nothing beside it")
            parts = [
                (_cost(child), _node(tenant, child, f"{path}.{group}[{i}]", depth + 1, counter))
                for i, child in enumerate(tree[group])
            ]
            return join(*(part for _, part in sorted(parts, key=lambda p: p[0])))
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise SegmentError(path, f"at most {MAX_CONDITIONS} conditions")
    return _condition(tenant, tree, path)


def _cost(tree: Any) -> int:
    """A rough evaluation cost per contact, to order a group's conditions cheapest first."""
    if not isinstance(tree, dict):
        return 0
    if "all" in tree or "any" in tree:
        children = tree.get("all") or tree.get("any") or []
        return sum(_cost(child) for child in children) if isinstance(children, list) else 0
    field = tree.get("field")
    if field in ("list", "topic"):
        return 2
    return 10 if isinstance(field, str) and field.startswith("attributes.") else 1


def _condition(tenant: str, node: dict[str, Any], path: str) -> ColumnElement[bool]:
    unknown = set(node) - {"field", "op", "value"}
    if unknown:
        raise SegmentError(f"{path}.{sorted(unknown)[0]}", "unknown key")
    field, op = node.get("field"), node.get("op")
    if op not in OPS:
        raise SegmentError(f"{path}.op", f"one of {', '.join(OPS)}")
    if "value" not in node:
        raise SegmentError(f"{path}.value", "required")
    value, where = node["value"], f"{path}.value"
    if op == "exists":
        if not isinstance(value, bool):
            raise SegmentError(where, "true or false")
    elif op in ("in", "nin"):
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise SegmentError(where, f"a list of 1 to {MAX_IN_VALUES} values")
    c = schema.contacts.c
    if field in ("list", "topic"):
        return _membership(tenant, field, op, value, where)
    if field == "created_at":
        return _compare_column(c.created_at, op, value, where, _timestamp)
    if field in _TEXT_FIELDS:
        if field == "status":
            _check_statuses(op, value, where)
        return _compare_column(getattr(c, field), op, value, where, _text)
    match = _ATTRIBUTE.match(field) if isinstance(field, str) else None
    if match is None:
        raise SegmentError(
            f"{path}.field",
            "email, name, locale, timezone, status, created_at, list, topic or attributes.<name>",
        )
    return _attribute(match.group(1), op, value, where)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SegmentError(where, "a string")
    return value


def _timestamp(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SegmentError(where, "Unix seconds or an ISO 8601 time")
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise SegmentError(where, "Unix seconds or an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    return float(value)


def _check_statuses(op: str, value: Any, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    if op in ("eq", "neq", "in", "nin") and not all(v in CONTACT_STATUSES for v in values):
        raise SegmentError(where, f"one of {', '.join(CONTACT_STATUSES)}")


def _compare_column(
    column: sa.ColumnElement[Any],
    op: str,
    value: Any,
    where: str,
    convert: Callable[[Any, str], Any],
) -> ColumnElement[bool]:
    if op == "exists":
        present = column.is_not(None) if convert is _timestamp else sa.func.length(column) > 0
        return present if value else sa.not_(present)
    if op == "contains":
        if convert is _timestamp:
            raise SegmentError(where, "contains applies to text")
        return column.icontains(_text(value, where), autoescape=True)
    if op in ("in", "nin"):
        values = [convert(v, f"{where}[{i}]") for i, v in enumerate(value)]
        within: ColumnElement[bool] = column.in_(values)
        return within if op == "in" else sa.not_(within)
    if op in ("eq", "neq"):
        equal: ColumnElement[bool] = column == sa.literal(convert(value, where))
        return equal if op == "eq" else sa.not_(equal)
    ordered: ColumnElement[bool] = getattr(column, _ORDERING[op])(convert(value, where))
    return ordered


def _json_kind(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise SegmentError(where, "a string, number or boolean")


def _attribute(name: str, op: str, value: Any, where: str) -> ColumnElement[bool]:
    column = schema.contacts.c.attributes
    path = sa.literal(f'$."{name}"')
    element = column[name]
    if op == "exists":
        present = sa.or_(
            *(
                json_type_is(column, path, sa.literal(k))
                for k in ("string", "number", "boolean", "array")
            )
        )
        return present if value else sa.not_(present)
    if op == "contains":
        text = _text(value, where)
        substring = sa.and_(
            json_type_is(column, path, sa.literal("string")),
            element.as_string().icontains(text, autoescape=True),
        )
        return sa.or_(substring, json_array_has(column, path, sa.literal(text)))
    if op in ("in", "nin"):
        matched = sa.or_(*(_attribute_eq(name, v, f"{where}[{i}]") for i, v in enumerate(value)))
        return matched if op == "in" else sa.not_(matched)
    if op in ("eq", "neq"):
        matched = _attribute_eq(name, value, where)
        return matched if op == "eq" else sa.not_(matched)
    # Only numbers are ordered: text order depends on each database's collation.
    if _json_kind(value, where) != "number":
        raise SegmentError(where, "a number (attributes are ordered numerically)")
    return _guarded(name, "number", getattr(element.as_float(), _ORDERING[op])(value))


def _attribute_eq(name: str, value: Any, where: str) -> ColumnElement[bool]:
    kind = _json_kind(value, where)
    element = schema.contacts.c.attributes[name]
    typed = {
        "boolean": element.as_boolean(),
        "number": element.as_float(),
        "string": element.as_string(),
    }[kind]
    return _guarded(name, kind, typed == value)


def _guarded(name: str, kind: str, comparison: ColumnElement[bool]) -> ColumnElement[bool]:
    """``comparison`` where the attribute has JSON type ``kind``, else false (never NULL)."""
    column = schema.contacts.c.attributes
    guard = json_type_is(column, sa.literal(f'$."{name}"'), sa.literal(kind))
    return guarded(guard, comparison)


def _membership(tenant: str, field: str, op: str, value: Any, where: str) -> ColumnElement[bool]:
    if op not in ("eq", "neq", "in", "nin"):
        raise SegmentError(where.rpartition(".")[0] + ".op", f"{field} takes eq, neq, in or nin")
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise SegmentError(
            where, f"a {field} id (integer)" + (" or a list of them" if op in ("in", "nin") else "")
        )
    inside = in_lists(tenant, ids) if field == "list" else in_topics(tenant, ids)
    return inside if op in ("eq", "in") else sa.not_(inside)


def in_lists(tenant: str, list_ids: list[int]) -> ColumnElement[bool]:
    """The contact has an active subscription to one of the lists."""
    s = schema.subscriptions.c
    where = (s.tenant == tenant, s.list_id.in_(list_ids), s.status == "active")
    return _member(s.contact_id, where)


def in_topics(tenant: str, topic_ids: list[int]) -> ColumnElement[bool]:
    """The contact opted in to one of the topics."""
    t = schema.topic_preferences.c
    where = (t.tenant == tenant, t.topic_id.in_(topic_ids), t.subscribed.is_(True))
    return _member(t.contact_id, where)


def _member(
    member_id: sa.ColumnElement[Any], where: tuple[ColumnElement[bool], ...]
) -> ColumnElement[bool]:
    contact_id = schema.contacts.c.id
    members = sa.select(member_id).where(*where).scalar_subquery()
    correlated = sa.exists().where(member_id == contact_id, *where)
    return member(contact_id, members, correlated)


def dumps(tree: Any) -> str:
    return json.dumps(tree, separators=(",", ":"), sort_keys=True)
