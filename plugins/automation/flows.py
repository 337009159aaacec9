"""Flow definitions: a trigger, then steps, as versioned JSON documents.

A document is decoded step by step, so every bad step gets its own error naming it
(``steps[2].duration: …``). Steps run in order unless a ``branch`` jumps (to a step ``id``).
``goal`` steps are not run in place: their event ends the enrolment wherever it is.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from gateway.durations import parse_duration

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "contains", "exists"]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DEFAULT_COOLDOWN = "24h"


class Condition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One test; exactly one form: ``field``+``op``(+``value``) on ``properties.<key>`` (the
    trigger event's) or ``contact.<email|status|timezone|attributes.<key>>``; ``engaged``
    (``opened``/``clicked`` a send step: ``step`` id, default the latest send); ``event``
    (the contact had that event since enrolling); ``list`` (subscribed to that list)."""

    field: str = ""
    op: Op = "eq"
    value: Any = None
    engaged: Literal["opened", "clicked", ""] = ""
    step: str = ""
    event: str = ""
    list: int = 0


class Trigger(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    event: Name
    conditions: list[Condition] = msgspec.field(default_factory=list)


class _Step(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    id: str = ""
    """Branches jump to it; default: the step's index as text."""


class SendStep(_Step, tag="send"):
    from_: str = msgspec.field(name="from")
    template: str = ""
    """A stored template's id (campaigns); or give ``subject`` and ``html``/``text`` inline."""
    subject: str = ""
    html: str = ""
    text: str = ""
    stream: str = "transactional"
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    """Overrides: extra template variables (beside ``contact`` and ``event``)."""


class WaitStep(_Step, tag="wait"):
    duration: str = ""
    until: str = ""
    """``HH:MM`` in the contact's time zone (UTC when it has none): the next such time."""
    event: str = ""
    """Wait for this event; ``timeout`` (required) bounds the wait."""
    timeout: str = ""


class BranchStep(_Step, tag="branch"):
    if_: list[Condition] = msgspec.field(name="if")
    """All must hold (an empty list always holds)."""
    then: str
    else_: str = msgspec.field(name="else", default="")
    """Default: the next step."""


class GoalStep(_Step, tag="goal"):
    event: Name
    conditions: list[Condition] = msgspec.field(default_factory=list)


class UpdateStep(_Step, tag="update"):
    set: dict[str, str | int | float | bool | None] = msgspec.field(default_factory=dict)
    subscribe_list: int = 0
    unsubscribe_list: int = 0


class ExitStep(_Step, tag="exit"):
    reason: str = "exit_step"


Step = SendStep | WaitStep | BranchStep | GoalStep | UpdateStep | ExitStep


class Flow(msgspec.Struct, kw_only=True):
    """A checked definition (what a version stores)."""

    name: str
    trigger: Trigger
    steps: list[Step]
    reentry: Literal["never", "after_exit", "always"] = "after_exit"
    """``after_exit``: again once the previous enrolment ended; ``always``: even while one runs."""
    cooldown: str = DEFAULT_COOLDOWN
    """No new enrolment of the contact in this flow sooner than this after the last one."""
    list_id: int = 0
    """When set, sends go only to contacts subscribed to this list (consent), and one-click
    unsubscribes of these mails end that subscription."""
    human_only: bool = True
    """Engagement (opens, clicks) by machines does not count in this flow's branches."""

    def index_of(self, step_id: str) -> int:
        for i, step in enumerate(self.steps):
            if step_id in (step.id, str(i)):
                return i
        raise KeyError(step_id)

    @property
    def goals(self) -> list[GoalStep]:
        return [s for s in self.steps if isinstance(s, GoalStep)]

    @property
    def cooldown_seconds(self) -> float:
        return parse_duration(self.cooldown)


class _Document(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    trigger: Trigger
    steps: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=100)]
    reentry: Literal["never", "after_exit", "always"] = "after_exit"
    cooldown: str = DEFAULT_COOLDOWN
    list_id: int = 0
    human_only: bool = True


class FlowErrors(Exception):
    """The document is not a valid flow: ``errors`` lists ``(field, why)``, one per fault."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {why}" for f, why in errors))
        self.errors = errors


def _path(prefix: str, error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    detail, sep, at = text.rpartition(" - at `$")
    if not sep:
        return prefix, text
    return prefix + at.rstrip("`"), detail


def parse_flow(document: Any) -> Flow:
    """``document`` (decoded JSON) as a :class:`Flow`; :class:`FlowErrors` names each fault."""
    try:
        doc = msgspec.convert(document, _Document)
    except msgspec.ValidationError as e:
        raise FlowErrors([_path("", e)]) from None
    errors: list[tuple[str, str]] = []
    steps: list[Step] = []
    for i, raw in enumerate(doc.steps):
        try:
            steps.append(msgspec.convert(raw, Step))
        except msgspec.ValidationError as e:
            errors.append(_path(f"steps[{i}]", e))
    _check_duration(doc.cooldown, "cooldown", errors)
    for i, cond in enumerate(doc.trigger.conditions):
        _check_condition(cond, f"trigger.conditions[{i}]", errors, engagement=False)
    if not errors:
        _check_steps(steps, errors)
    if errors:
        raise FlowErrors(errors)
    return Flow(
        name=doc.name,
        trigger=doc.trigger,
        steps=steps,
        reentry=doc.reentry,
        cooldown=doc.cooldown,
        list_id=doc.list_id,
        human_only=doc.human_only,
    )


def _check_steps(steps: list[Step], errors: list[tuple[str, str]]) -> None:
    ids = [s.id or str(i) for i, s in enumerate(steps)]
    for i, step_id in enumerate(ids):
        if ids.index(step_id) != i:
            errors.append((f"steps[{i}].id", f"{step_id!r} is used by steps[{ids.index(step_id)}]"))
    for i, step in enumerate(steps):
        at = f"steps[{i}]"
        if isinstance(step, SendStep):
            if "@" not in step.from_:
                errors.append((f"{at}.from", "the sender's address"))
            if not step.template and not step.subject:
                errors.append((f"{at}.subject", "give a template, or a subject and a body"))
            if not step.template and not (step.html or step.text):
                errors.append((f"{at}.html", "give a template, or html or text"))
        elif isinstance(step, WaitStep):
            forms = [bool(step.duration), bool(step.until), bool(step.event)]
            if sum(forms) != 1:
                errors.append((at, "a wait has exactly one of duration, until, event"))
            if step.duration:
                _check_duration(step.duration, f"{at}.duration", errors)
            if step.until and not _TIME_OF_DAY.match(step.until):
                errors.append((f"{at}.until", "a time of day, HH:MM"))
            if step.event:
                if not step.timeout:
                    errors.append((f"{at}.timeout", "waiting for an event needs a timeout"))
                else:
                    _check_duration(step.timeout, f"{at}.timeout", errors)
        elif isinstance(step, BranchStep):
            for j, cond in enumerate(step.if_):
                _check_condition(cond, f"{at}.if[{j}]", errors, engagement=True)
            for key, target in (("then", step.then), ("else", step.else_)):
                if target and target not in ids:
                    errors.append((f"{at}.{key}", f"no step has id {target!r}"))
                elif target and ids.index(target) <= i:
                    errors.append((f"{at}.{key}", "branches jump forward only (no loops)"))
        elif isinstance(step, GoalStep):
            for j, cond in enumerate(step.conditions):
                _check_condition(cond, f"{at}.conditions[{j}]", errors, engagement=False)
        elif isinstance(step, UpdateStep):
            if not (step.set or step.subscribe_list or step.unsubscribe_list):
                errors.append((at, "an update sets an attribute or (un)subscribes a list"))


def _check_duration(text: str, field: str, errors: list[tuple[str, str]]) -> None:
    try:
        parse_duration(text)
    except ValueError as e:
        errors.append((field, str(e)))


def _check_condition(
    cond: Condition, field: str, errors: list[tuple[str, str]], *, engagement: bool
) -> None:
    forms = [bool(cond.field), bool(cond.engaged), bool(cond.event), bool(cond.list)]
    if sum(forms) != 1:
        errors.append((field, "exactly one of field, engaged, event, list"))
        return
    if cond.engaged and not engagement:
        errors.append((f"{field}.engaged", "engagement is tested in branches only"))
    if cond.field and not cond.field.startswith(("properties.", "contact.")):
        errors.append((f"{field}.field", "properties.<key> or contact.<key>"))
    if cond.field and cond.op != "exists" and cond.value is None:
        errors.append((f"{field}.value", f"op {cond.op!r} compares with a value"))


# --- evaluating field conditions --------------------------------------------------------------


def lookup(path: str, properties: dict[str, Any], contact: dict[str, Any]) -> Any:
    head, _, rest = path.partition(".")
    value: Any = properties if head == "properties" else contact
    for part in rest.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def compare(op: Op, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not None if expected in (None, True) else actual is None
    if actual is None:
        return op == "ne"
    try:
        match op:
            case "eq":
                return bool(actual == expected)
            case "ne":
                return bool(actual != expected)
            case "gt":
                return bool(actual > expected)
            case "gte":
                return bool(actual >= expected)
            case "lt":
                return bool(actual < expected)
            case "lte":
                return bool(actual <= expected)
            case "in":
                return isinstance(expected, list) and actual in expected
            case "contains":
                return expected in actual if isinstance(actual, list | str) else False
    except TypeError:
        return False
