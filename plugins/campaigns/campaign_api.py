"""``/v1/campaigns``: campaigns over HTTP — create and change drafts, schedule or send now
(after the precheck), pause, resume, cancel, test sends to a seed list, stats.

Reads need the ``read`` scope; changes ``admin``. An action the campaign's state does not
allow answers 409 naming the state; a precheck that finds problems answers 422 with all of
them in ``problems``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from gateway_plugins.audience import audience_of
from gateway_plugins.audience.api import Limit, decode_cursor, next_cursor
from gateway_plugins.campaigns import campaigns_of
from gateway_plugins.campaigns.campaign_model import (
    Campaign,
    CampaignStatus,
    Run,
    StateError,
    Window,
)
from gateway_plugins.campaigns.campaign_store import CampaignStore
from gateway_plugins.campaigns.template_store import NotFound
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import FromPath, FromQuery

from gateway.api.auth import request_tenant, requires
from gateway.api.mime import check_address
from gateway.api.problems import PROBLEM_TYPE, Problem, decode_json
from gateway.plugin_manager import call_all

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
MAX_SEEDS = 20


class WindowIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    days: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=6)]], msgspec.Meta(min_length=1)] = (
        msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    )
    """0 = Monday."""
    start_hour: Annotated[int, msgspec.Meta(ge=0, le=23)] = 0
    end_hour: Annotated[int, msgspec.Meta(ge=1, le=24)] = 24
    zone: str = "UTC"
    recipient_zone: bool = False
    """Each recipient's own zone (``zone`` for those without one)."""


class CampaignIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    template_id: int
    template_version: int | None = None
    """Default: the template's latest version when the campaign is scheduled."""
    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    list_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=100)]
    exclude_segment_ids: Annotated[list[int], msgspec.Meta(max_length=100)] = msgspec.field(
        default_factory=list
    )
    topic_id: int | None = None
    from_: Annotated[str, msgspec.Meta(min_length=3, max_length=320)] = msgspec.field(name="from")
    from_name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    reply_to: Annotated[str, msgspec.Meta(max_length=320)] = ""
    stream: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    throttle_per_hour: Annotated[int, msgspec.Meta(ge=1)] | None = None
    window: WindowIn | None = None


class CampaignPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    template_id: int | msgspec.UnsetType = msgspec.UNSET
    template_version: int | msgspec.UnsetType | None = msgspec.UNSET
    variables: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    list_ids: list[int] | msgspec.UnsetType = msgspec.UNSET
    exclude_segment_ids: list[int] | msgspec.UnsetType = msgspec.UNSET
    topic_id: int | msgspec.UnsetType | None = msgspec.UNSET
    throttle_per_hour: int | msgspec.UnsetType | None = msgspec.UNSET
    window: WindowIn | msgspec.UnsetType | None = msgspec.UNSET


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scheduled_at: dt.datetime | None = None
    """Default: now."""


class TestIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    emails: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_SEEDS)]


class RunView(msgspec.Struct, kw_only=True):
    number: int
    status: str
    due_at: dt.datetime
    template_version: int
    planned: int
    counts: dict[str, int]


class CampaignView(msgspec.Struct, kw_only=True):
    id: int
    name: str
    status: CampaignStatus
    template_id: int
    template_version: int | None
    variables: dict[str, Any]
    list_ids: list[int]
    exclude_segment_ids: list[int]
    topic_id: int | None
    from_: str = msgspec.field(name="from")
    from_name: str
    reply_to: str
    stream: str
    scheduled_at: dt.datetime | None
    throttle_per_hour: int | None
    window: Window | None
    created_at: dt.datetime
    updated_at: dt.datetime


class CampaignPage(msgspec.Struct, kw_only=True):
    data: list[CampaignView]
    next_cursor: str | None


class StatsView(msgspec.Struct, kw_only=True):
    id: int
    status: CampaignStatus
    totals: dict[str, int]
    """Sends by state (``planned``, ``queued``, ``skipped``, ``delivered``, ``bounced``,
    ``dropped``, ``failed``, ``cancelled``), ``recipients`` (all send rows), and
    ``skipped:<reason>``."""
    runs: list[RunView]


class TestView(msgspec.Struct, kw_only=True):
    message_ids: list[str]


class CampaignsController(Controller):
    path = "/v1/campaigns"
    tags = ["campaigns"]

    @get("/", guards=[requires("read")], summary="List campaigns")
    async def index(
        self,
        request: Request[Any, Any, Any],
        cursor: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> CampaignPage:
        rows = await _store(request).list_campaigns(
            request_tenant(request), after=decode_cursor(cursor), limit=limit
        )
        return CampaignPage(
            data=[campaign_view(c) for c in rows],
            next_cursor=next_cursor(rows, limit),
        )

    @post(
        "/", guards=[requires("admin")], summary="Create a draft campaign", opt={"body": CampaignIn}
    )
    async def create(self, request: Request[Any, Any, Any]) -> CampaignView:
        body = decode_json(await request.body(), CampaignIn)
        tenant = request_tenant(request)
        await _check_references(request, tenant, body)
        try:
            sender = check_address(body.from_, "from").email
            reply_to = check_address(body.reply_to, "reply_to").email if body.reply_to else ""
        except Problem:
            raise
        created = await _store(request).create(
            tenant,
            name=body.name,
            template_id=body.template_id,
            template_version=body.template_version,
            variables=body.variables,
            list_ids=body.list_ids,
            exclude_segment_ids=body.exclude_segment_ids,
            topic_id=body.topic_id,
            from_email=sender,
            from_name=body.from_name,
            reply_to=reply_to,
            stream=body.stream,
            throttle_per_hour=body.throttle_per_hour,
            window=_window(body.window),
        )
        return campaign_view(created)

    @get("/{campaign_id:int}", guards=[requires("read")], summary="One campaign")
    async def show(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> CampaignView:
        return campaign_view(await _get(request, campaign_id))

    @patch(
        "/{campaign_id:int}",
        guards=[requires("admin")],
        summary="Change a draft",
        opt={"body": CampaignPatch},
    )
    async def change(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> CampaignView:
        body = decode_json(await request.body(), CampaignPatch)
        fields = {
            name: getattr(body, name)
            for name in body.__struct_fields__
            if getattr(body, name) is not msgspec.UNSET
        }
        if "window" in fields:
            fields["window"] = _window(fields["window"])
        tenant = request_tenant(request)
        current = await _get(request, campaign_id)
        merged = CampaignIn(
            name=fields.get("name", current.name),
            template_id=fields.get("template_id", current.template_id),
            list_ids=fields.get("list_ids", current.list_ids),
            exclude_segment_ids=fields.get("exclude_segment_ids", current.exclude_segment_ids),
            topic_id=fields.get("topic_id", current.topic_id),
            from_=current.from_email,
            stream=current.stream,
        )
        await _check_references(request, tenant, merged)
        try:
            return campaign_view(await _store(request).update(tenant, campaign_id, **fields))
        except StateError as e:
            raise _state_problem(e) from None

    @post(
        "/{campaign_id:int}/schedule",
        guards=[requires("admin")],
        status_code=200,
        summary="Schedule a draft (after the precheck)",
        opt={"body": ScheduleIn},
    )
    async def schedule(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> Response[Any]:
        body = decode_json(await request.body() or b"{}", ScheduleIn)
        due = body.scheduled_at.timestamp() if body.scheduled_at is not None else None
        return await _schedule(request, campaign_id, due)

    @post(
        "/{campaign_id:int}/send",
        guards=[requires("admin")],
        status_code=200,
        summary="Send a draft now (after the precheck)",
    )
    async def send(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> Response[Any]:
        return await _schedule(request, campaign_id, None)

    @post("/{campaign_id:int}/pause", guards=[requires("admin")], status_code=200, summary="Pause")
    async def pause(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> CampaignView:
        await _get(request, campaign_id)
        try:
            paused = await _store(request).pause(request_tenant(request), campaign_id)
        except StateError as e:
            raise _state_problem(e) from None
        campaigns_of(request.app.state.api.gateway).checks.forget()
        return campaign_view(paused)

    @post(
        "/{campaign_id:int}/resume", guards=[requires("admin")], status_code=200, summary="Resume"
    )
    async def resume(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> CampaignView:
        await _get(request, campaign_id)
        try:
            resumed = await _store(request).resume(request_tenant(request), campaign_id)
        except StateError as e:
            raise _state_problem(e) from None
        state = campaigns_of(request.app.state.api.gateway)
        state.checks.forget()
        state.fanout.wake.set()
        return campaign_view(resumed)

    @post(
        "/{campaign_id:int}/cancel",
        guards=[requires("admin")],
        status_code=200,
        summary="Cancel: sends not yet delivered end cancelled",
    )
    async def cancel(
        self, request: Request[Any, Any, Any], campaign_id: FromPath[int]
    ) -> CampaignView:
        await _get(request, campaign_id)
        try:
            cancelled, _ = await _store(request).cancel(request_tenant(request), campaign_id)
        except StateError as e:
            raise _state_problem(e) from None
        campaigns_of(request.app.state.api.gateway).checks.forget()
        return campaign_view(cancelled)

    @post(
        "/{campaign_id:int}/test",
        guards=[requires("admin")],
        status_code=202,
        summary="Send the campaign's mail to a seed list (subject marked [Test])",
        opt={"body": TestIn},
    )
    async def test(self, request: Request[Any, Any, Any], campaign_id: FromPath[int]) -> TestView:
        body = decode_json(await request.body(), TestIn)
        campaign = await _get(request, campaign_id)
        gateway = request.app.state.api.gateway
        state = campaigns_of(gateway)
        try:
            version = await state.templates.version(
                campaign.tenant, campaign.template_id, campaign.template_version
            )
        except NotFound as e:
            raise Problem(404, "not-found", "Not found", str(e)) from None
        seeds = [check_address(e, f"emails[{i}]").email for i, e in enumerate(body.emails)]
        return TestView(message_ids=await state.fanout.test_send(campaign, version, seeds))

    @get("/{campaign_id:int}/stats", guards=[requires("read")], summary="What happened, per run")
    async def stats(self, request: Request[Any, Any, Any], campaign_id: FromPath[int]) -> StatsView:
        campaign = await _get(request, campaign_id)
        store = _store(request)
        counts = await store.send_counts(campaign.tenant, campaign_id)
        runs = await store.runs(campaign.tenant, campaign_id)
        totals: dict[str, int] = {}
        for per_run in counts.values():
            for key, value in per_run.items():
                totals[key] = totals.get(key, 0) + value
        totals["recipients"] = sum(v for k, v in totals.items() if ":" not in k)
        return StatsView(
            id=campaign.id,
            status=campaign.status,
            totals=totals,
            runs=[run_view(r, counts.get(str(r.number), {})) for r in runs],
        )


async def _schedule(
    request: Request[Any, Any, Any], campaign_id: int, due: float | None
) -> Response[Any]:
    gateway = request.app.state.api.gateway
    state = campaigns_of(gateway)
    campaign = await _get(request, campaign_id)
    if campaign.status != "draft":
        raise _state_problem(StateError("schedule", campaign.status))
    try:
        version = await state.templates.version(
            campaign.tenant, campaign.template_id, campaign.template_version
        )
    except NotFound as e:
        raise Problem(422, "invalid-field", "Invalid field", str(e), field="template_id") from None
    found = await call_all(
        gateway.pm,
        "gateway_campaign_precheck",
        gateway=gateway,
        campaign=campaign,
        template=version,
    )
    problems = [p for listed in found for p in listed]
    if problems:
        return Response(
            {
                "type": PROBLEM_TYPE + "campaign-precheck",
                "title": "Campaign precheck failed",
                "status": 422,
                "detail": f"{len(problems)} problem(s): " + "; ".join(problems),
                "problems": problems,
            },
            status_code=422,
            media_type="application/problem+json",
        )
    now = gateway.clock.now()
    try:
        scheduled, _ = await state.campaigns.schedule(
            campaign.tenant, campaign_id, max(now, due) if due is not None else now, version.version
        )
    except StateError as e:
        raise _state_problem(e) from None
    state.fanout.wake.set()
    return Response(campaign_view(scheduled), status_code=200)


async def _check_references(request: Request[Any, Any, Any], tenant: str, body: CampaignIn) -> None:
    """Every id the campaign names exists in the tenant (422 naming the field otherwise)."""
    gateway = request.app.state.api.gateway
    audience = audience_of(gateway).store
    try:
        await campaigns_of(gateway).templates.get(tenant, body.template_id)
    except NotFound:
        raise Problem.invalid("template_id", f"no template {body.template_id}") from None
    for field, ids, lookup in (
        ("list_ids", body.list_ids, audience.get_list),
        ("exclude_segment_ids", body.exclude_segment_ids, audience.get_segment),
        ("topic_id", [body.topic_id] if body.topic_id is not None else [], audience.get_topic),
    ):
        for ident in ids:
            try:
                await lookup(tenant, ident)
            except NotFound:
                raise Problem.invalid(field, f"no such id {ident}") from None
    if body.window is not None:
        try:
            ZoneInfo(body.window.zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise Problem.invalid("window.zone", "not an IANA time zone name") from None
        if body.window.start_hour >= body.window.end_hour:
            raise Problem.invalid("window", "start_hour must be before end_hour")


def _window(value: WindowIn | None) -> Window | None:
    if value is None:
        return None
    return Window(
        days=sorted(set(value.days)),
        start_hour=value.start_hour,
        end_hour=value.end_hour,
        zone=value.zone,
        recipient_zone=value.recipient_zone,
    )


async def _get(request: Request[Any, Any, Any], campaign_id: int) -> Campaign:
    try:
        return await _store(request).get(request_tenant(request), campaign_id)
    except NotFound as e:
        raise Problem(404, "not-found", "Not found", str(e)) from None


def _store(request: Request[Any, Any, Any]) -> CampaignStore:
    return campaigns_of(request.app.state.api.gateway).campaigns


def _state_problem(e: StateError) -> Problem:
    return Problem(409, "campaign-state", "Not allowed in this state", str(e))


def _time(value: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(value, dt.UTC) if value is not None else None


def campaign_view(c: Campaign) -> CampaignView:
    created, updated = _time(c.created_at), _time(c.updated_at)
    assert created is not None and updated is not None
    return CampaignView(
        id=c.id,
        name=c.name,
        status=c.status,
        template_id=c.template_id,
        template_version=c.template_version,
        variables=c.variables,
        list_ids=c.list_ids,
        exclude_segment_ids=c.exclude_segment_ids,
        topic_id=c.topic_id,
        from_=c.from_email,
        from_name=c.from_name,
        reply_to=c.reply_to,
        stream=c.stream,
        scheduled_at=_time(c.scheduled_at),
        throttle_per_hour=c.throttle_per_hour,
        window=c.window,
        created_at=created,
        updated_at=updated,
    )


def run_view(r: Run, counts: dict[str, int]) -> RunView:
    due = _time(r.due_at)
    assert due is not None
    return RunView(
        number=r.number,
        status=r.status,
        due_at=due,
        template_version=r.template_version,
        planned=r.planned,
        counts=counts,
    )
