"""Events in: one path for API events, audience events and engagement events.

An event is stored once per ``(tenant, event id)`` (a repeat changes nothing), then, in this
order: it ends open enrolments whose flow has it as a goal, wakes enrolments waiting for it,
and enrols the contact in every active flow it triggers (trigger conditions, re-entry rules
and cooldown permitting).
"""

from __future__ import annotations

from typing import Any

import msgspec
from gateway_plugins.audience.model import Contact
from gateway_plugins.automation.flows import GoalStep
from gateway_plugins.automation.runner import Conditions, Runner
from gateway_plugins.automation.store import AutomationStore


class Outcome(msgspec.Struct, kw_only=True):
    duplicate: bool = False
    enrolled: list[int] = msgspec.field(default_factory=list)
    goals: list[int] = msgspec.field(default_factory=list)
    """Enrolments this event ended as a goal reached."""
    resumed: int = 0


class Intake:
    def __init__(self, store: AutomationStore, conditions: Conditions, runner: Runner) -> None:
        self.store = store
        self.conditions = conditions
        self.runner = runner

    async def accept(
        self,
        contact: Contact,
        name: str,
        properties: dict[str, Any],
        *,
        event_id: str,
        source: str,
        at: float,
        message_id: str = "",
    ) -> Outcome:
        tenant = contact.tenant
        stored = await self.store.add_event(
            tenant,
            event_id,
            name,
            contact.id,
            properties,
            source=source,
            at=at,
            message_id=message_id,
        )
        if not stored:
            return Outcome(duplicate=True)
        outcome = Outcome()
        for enrolment in await self.store.open_enrolments(tenant, contact.id):
            flow = await self.store.definition(enrolment.flow_id, enrolment.version)
            for i, goal in enumerate(flow.steps):
                if not isinstance(goal, GoalStep) or goal.event != name:
                    continue
                if not await self.conditions.all_hold(goal.conditions, contact, properties):
                    continue
                if await self.store.end(enrolment, "goal", f"goal:{name}", i):
                    outcome.goals.append(enrolment.id)
                    await self.runner.observe(
                        "flow.goal", enrolment, f"goal:{name}", {"event": name}
                    )
                break
        outcome.resumed = await self.store.wake_waiting(tenant, contact.id, name, at)
        trigger = {"name": name, "event_id": event_id, "properties": properties}
        for flow_row in await self.store.triggered_by(tenant, name):
            flow = await self.store.definition(flow_row.id, flow_row.version)
            if not await self.conditions.all_hold(flow.trigger.conditions, contact, properties):
                continue
            enrolled = await self.store.enrol(flow_row, flow, contact.id, trigger, at)
            if enrolled is not None:
                outcome.enrolled.append(enrolled)
        if outcome.enrolled or outcome.resumed:
            self.runner.wake()
        return outcome
