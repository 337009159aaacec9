"""Campaigns, their runs and their sends, and the states each may move between.

A campaign: ``draft`` → ``scheduled`` → ``sending`` → ``sent``, with ``paused`` (from
``scheduled`` or ``sending``, back to where it was by resume) and ``cancelled`` (from any
state but ``sent``). A send of a campaign is one *run*; each run has one *send* row per
recipient it considered: ``planned`` (written, its delivery not yet confirmed in the spool),
``queued`` (in the spool), ``skipped`` (with a reason), then what the delivery became
(``delivered``, ``bounced``, ``failed``, ``dropped``) or ``cancelled``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

CampaignStatus = Literal["draft", "scheduled", "sending", "paused", "sent", "cancelled"]
RunStatus = Literal["due", "fanning_out", "fanned_out", "paused", "done", "cancelled"]
SendStatus = Literal[
    "planned", "queued", "skipped", "delivered", "bounced", "failed", "dropped", "cancelled"
]
FINAL_SENDS: frozenset[str] = frozenset(
    {"skipped", "delivered", "bounced", "failed", "dropped", "cancelled"}
)
SkipReason = Literal[
    "unsubscribed",
    "pending",
    "topic_opt_out",
    "bounced",
    "complained",
    "suppressed",
    "frequency_cap",
    "excluded",
    "invalid_address",
    "erased",
    "render_failed",
]

TRANSITIONS: dict[str, frozenset[str]] = {
    "schedule": frozenset({"draft"}),
    "pause": frozenset({"scheduled", "sending"}),
    "resume": frozenset({"paused"}),
    "cancel": frozenset({"draft", "scheduled", "sending", "paused"}),
}
"""Which states each action may start from."""


class Window(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """When mail may arrive: ``days`` (0 = Monday) and ``[start, end)`` hours in ``zone``,
    or in each recipient's own zone (``recipient_zone``; ``zone`` for those without one)."""

    days: list[int] = msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    start_hour: int = 0
    end_hour: int = 24
    zone: str = "UTC"
    recipient_zone: bool = False


class Campaign(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    name: str
    status: CampaignStatus
    template_id: int
    template_version: int | None
    """``None``: the template's latest version when a run starts."""
    variables: dict[str, Any]
    list_ids: list[int]
    exclude_segment_ids: list[int]
    topic_id: int | None
    from_email: str
    from_name: str
    reply_to: str
    stream: str
    scheduled_at: float | None
    throttle_per_hour: int | None
    window: Window | None
    created_at: float
    updated_at: float


class Run(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    campaign_id: int
    number: int
    status: RunStatus
    due_at: float
    template_version: int
    cursor: int
    """The last contact id whose send row is written: fan-out resumes after it."""
    planned: int
    """Send rows written for delivery so far (their throttle slots)."""
    lease_owner: str
    lease_until: float
    started_at: float | None
    fanned_out_at: float | None
    finished_at: float | None


class Send(msgspec.Struct, kw_only=True):
    id: int
    tenant: str
    campaign_id: int
    run_id: int
    contact_id: int
    email: str
    status: SendStatus
    reason: str
    message_id: str
    not_before: float | None
    variant: str
    """Reserved for A/B tests (which template variant this recipient got)."""
    list_id: int | None
    """The list the recipient is mailed for (its unsubscribe link and footer)."""


class StateError(Exception):
    """An action not allowed in the campaign's current state."""

    def __init__(self, action: str, status: str) -> None:
        super().__init__(f"cannot {action} a campaign that is {status}")
        self.action = action
        self.status = status
