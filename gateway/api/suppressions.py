"""``/v1/suppressions``: a tenant's list of recipients it must not send to.

Sends over HTTP skip suppressed recipients (reported per recipient as ``suppressed``).
Entries carry a scope — ``tenant`` (the default: every message) or ``stream:<name>`` (that
stream's messages only) — a reason — ``bounce``, ``complaint``, ``unsubscribe`` or ``manual``
— and the time they were added. Listing and export need ``read``; changes need ``admin``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Any, get_args

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.mime import check_address, check_header_text
from gateway.api.problems import Problem, decode_json
from gateway.store.base import TENANT_SCOPE, Suppression, SuppressionReason, is_scope

MAX_ENTRIES = 10_000
MAX_IMPORT = 100_000
_REASONS: tuple[str, ...] = get_args(SuppressionReason)


class SuppressionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: str
    reason: SuppressionReason = "manual"
    detail: str = ""
    scope: str = TENANT_SCOPE
    """``tenant`` or ``stream:<name>``."""


class SuppressionAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    entries: Annotated[list[SuppressionIn], msgspec.Meta(min_length=1, max_length=MAX_ENTRIES)]


class SuppressionView(msgspec.Struct, kw_only=True):
    email: str
    scope: str
    reason: SuppressionReason
    created_at: dt.datetime
    detail: str


class SuppressionList(msgspec.Struct, kw_only=True):
    data: list[SuppressionView]
    next_cursor: str | None


class Changed(msgspec.Struct, kw_only=True):
    count: int


def _view(entry: Suppression) -> SuppressionView:
    return SuppressionView(
        email=entry.address,
        scope=entry.scope,
        reason=entry.reason,
        created_at=dt.datetime.fromtimestamp(entry.created_at, dt.UTC),
        detail=entry.detail,
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection")."""


def csv_cell(value: str) -> str:
    """``value`` made inert for spreadsheets: a leading ``'`` before a formula character."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _uncell(value: str) -> str:
    """The inverse of ``csv_cell``, so an export imports as it was."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_START) else value


def _check_scope(value: str, field: str, *, lenient: bool = False) -> str:
    """The scope, exactly as the document's pattern says; a CSV cell may be blank (tenant) or
    padded, as spreadsheets leave them."""
    scope = (value.strip() or TENANT_SCOPE) if lenient else value
    if not is_scope(scope):
        raise Problem.invalid(field, "'tenant' or 'stream:<name>'")
    return scope


def _parse_csv(text: str, tenant: str, now: float) -> list[Suppression]:
    """Entries from CSV with a header row; errors name the line (``line 3.reason``)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "email" not in reader.fieldnames:
        raise Problem.invalid("body", "the first line must be a header with an 'email' column")
    entries: list[Suppression] = []
    for row in reader:
        line = reader.line_num
        reason = (row.get("reason") or "manual").strip()
        if reason not in _REASONS:
            raise Problem.invalid(f"line {line}.reason", f"one of {', '.join(_REASONS)}")
        entries.append(
            Suppression(
                tenant=tenant,
                address=check_address(_uncell(row.get("email") or ""), f"line {line}.email").email,
                reason=reason,  # type: ignore[arg-type]
                created_at=now,
                detail=check_header_text(
                    _uncell(row.get("detail") or ""), f"line {line}.detail", max_length=500
                ),
                scope=_check_scope(row.get("scope") or "", f"line {line}.scope", lenient=True),
            )
        )
        if len(entries) > MAX_IMPORT:
            raise Problem.invalid("body", f"at most {MAX_IMPORT} entries per import")
    return entries


class SuppressionsController(Controller):
    path = "/v1/suppressions"
    tags = ["suppressions"]

    @get("/", guards=[requires("read")], summary="List suppressed recipients by address")
    async def index(
        self,
        request: Request[Any, Any, Any],
        reason: FromQuery[SuppressionReason | None] = None,
        in_scope: Annotated[str | None, QueryParameter(name="scope")] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> SuppressionList:
        api = ApiContext.of(request)
        entries = await api.store.list_suppressions(
            request.state.api_key.tenant,
            reason=reason,
            scope=_check_scope(in_scope, "scope") if in_scope is not None else None,
            after=cursor,
            limit=limit,
        )
        return SuppressionList(
            data=[_view(e) for e in entries],
            next_cursor=entries[-1].key if len(entries) == limit else None,
        )

    @post("/", guards=[requires("admin")], status_code=200, summary="Add or update entries")
    async def add(self, request: Request[Any, Any, Any]) -> Changed:
        api = ApiContext.of(request)
        data = decode_json(await request.body(), SuppressionAdd)
        tenant, now = request.state.api_key.tenant, api.clock.now()
        entries = [
            Suppression(
                tenant=tenant,
                address=check_address(e.email, f"entries[{i}].email").email,
                reason=e.reason,
                created_at=now,
                detail=check_header_text(e.detail, f"entries[{i}].detail", max_length=500),
                scope=_check_scope(e.scope, f"entries[{i}].scope"),
            )
            for i, e in enumerate(data.entries)
        ]
        return Changed(count=await api.store.add_suppressions(entries))

    @delete(
        "/{email:str}",
        guards=[requires("admin")],
        status_code=204,
        summary="Remove an address's entries (in one scope with ?scope=)",
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        email: FromPath[str],
        in_scope: Annotated[str | None, QueryParameter(name="scope")] = None,
    ) -> None:
        api = ApiContext.of(request)
        chosen = _check_scope(in_scope, "scope") if in_scope is not None else None
        if not await api.store.remove_suppression(request.state.api_key.tenant, email, chosen):
            raise Problem(
                404, "not-found", "Not found", f"{email} is not suppressed", field="email"
            )

    @post(
        "/import",
        guards=[requires("admin")],
        status_code=200,
        summary="Import entries from CSV",
        description="`text/csv` with a header row: `email` (required), `reason`, `detail` and "
        "`scope` (optional; reason defaults to manual, scope to tenant).",
    )
    async def import_csv(self, request: Request[Any, Any, Any]) -> Changed:
        api = ApiContext.of(request)
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "text/csv":
            raise Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "send text/csv",
                field="Content-Type",
            )
        try:
            text = (await request.body()).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Problem.invalid("body", "the CSV must be UTF-8") from None
        tenant, now = request.state.api_key.tenant, api.clock.now()
        try:
            entries = _parse_csv(text, tenant, now)
        except csv.Error as e:
            raise Problem.invalid("body", f"not valid CSV: {e}") from None
        return Changed(count=await api.store.add_suppressions(entries) if entries else 0)

    @get(
        "/export",
        guards=[requires("read")],
        summary="Export every entry as CSV",
        media_type="text/csv",
    )
    async def export_csv(self, request: Request[Any, Any, Any]) -> Response[str]:
        api = ApiContext.of(request)
        tenant = request.state.api_key.tenant
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["email", "reason", "created_at", "detail", "scope"])
        after: str | None = None
        while True:
            page = await api.store.list_suppressions(tenant, after=after, limit=1000)
            for e in page:
                created = dt.datetime.fromtimestamp(e.created_at, dt.UTC).isoformat()
                row = [e.address, e.reason, created, e.detail, e.scope]
                writer.writerow([csv_cell(cell) for cell in row])
            if len(page) < 1000:
                break
            after = page[-1].key
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'},
        )
