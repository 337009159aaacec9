"""Errors as RFC 9457 problem details, mapped in one place.

Every error the API returns is ``application/problem+json`` with ``type``, ``title``,
``status`` and ``detail``, plus ``field`` (the request field at fault, as a path such as
``to[1].email`` or ``Idempotency-Key``) whenever one is to blame. A local fault (the spool
cannot write) is ``503`` with ``Retry-After``: the client keeps the message and tries again.
"""

from __future__ import annotations

import datetime as dt
import http
import json
import logging
import math
import re
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gateway.ingress import Rejected
from gateway.message import Reject
from gateway.plugin_manager import HookError
from gateway.store.base import StoreError

log = logging.getLogger("gateway.api")

T = TypeVar("T")

PROBLEM_TYPE = "urn:gateway:problem:"
MEDIA_TYPE = "application/problem+json"


class FieldError(msgspec.Struct, kw_only=True):
    field: str
    detail: str


class ProblemDetail(msgspec.Struct, omit_defaults=True, kw_only=True):
    """RFC 9457 problem details, with the field at fault."""

    type: str
    title: str
    status: int
    detail: str
    field: str | None = None
    limit: str | None = None
    """Which limit a request broke (``cpu_time``, ``memory``, ``output_size``), when one did."""
    errors: list[FieldError] | None = None
    """Every fault, when a document has several (a flow definition: one per bad step)."""


class Problem(Exception):
    """Raise anywhere in the API to answer with a problem detail."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        limit: str | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = ProblemDetail(
            type=PROBLEM_TYPE + slug,
            title=title,
            status=status,
            detail=detail,
            field=field,
            limit=limit,
            errors=errors,
        )
        self.headers = headers or {}

    @classmethod
    def invalid(cls, field: str, why: str) -> Problem:
        """422: the request is well-formed, but ``field`` is wrong."""
        return cls(422, "invalid-field", "Invalid field", f"{field}: {why}", field=field)


def decode_json(body: bytes, into: type[T]) -> T:
    """Strictly decode a JSON body; errors name the field (``$.to[0].email`` → ``to[0].email``)."""
    if not body.strip():
        raise Problem(400, "invalid-json", "Invalid JSON", "the request body is empty")
    _refuse_duplicate_keys(body)
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as e:
        detail, _, at = str(e).rpartition(" - at `")
        if not _:
            detail, at = str(e), "$`"
        field = at.rstrip("`").removeprefix("$").removeprefix(".")
        named = re.match(r"Object (?:contains unknown|missing required) field `([^`]+)`", detail)
        if named:
            field = f"{field}.{named.group(1)}" if field else named.group(1)
            detail = "unknown field" if "unknown" in detail else "required field is missing"
        raise Problem(
            422,
            "invalid-field",
            "Invalid field",
            f"{field or 'body'}: {detail}",
            field=field or None,
        ) from None
    except msgspec.DecodeError as e:
        raise Problem(400, "invalid-json", "Invalid JSON", str(e)) from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(body: bytes) -> None:
    """400 for an object with a key twice: msgspec (like most parsers) keeps the last one, so
    two parsers on the way could read two different requests. The standard library's C
    scanner hands us each object's pairs; anything else it dislikes is left to msgspec."""
    try:
        json.loads(body, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as e:
        raise Problem(
            400, "invalid-json", "Invalid JSON", f"duplicate key {e.args[0]!r} in an object"
        ) from None
    except (ValueError, RecursionError):
        return


def query_time(text: str | None, field: str) -> float | None:
    """A query parameter holding an RFC 3339 time with a zone, as epoch seconds; anything else
    (a bare date, ``0.5``) is 400."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in text.upper():
        raise Problem(
            400,
            "invalid-parameter",
            "Invalid parameter",
            f"{field}: an RFC 3339 time with a zone, e.g. 2030-01-31T09:00:00Z",
            field=field,
        )
    return value.timestamp()


def problem_response(
    problem: ProblemDetail, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        content=msgspec.json.encode(problem),
        status_code=problem.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _on_problem(_: Request[Any, Any, Any], exc: Problem) -> Response[Any]:
    return problem_response(exc.detail, exc.headers)


def _on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Litestar checks query and path parameters; name the parameter it complained about."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    field = str(first.get("key", "")) or None
    why = str(first.get("message", exc.detail))
    detail = f"{field}: {why}" if field else why
    return problem_response(
        ProblemDetail(
            type=PROBLEM_TYPE + "invalid-parameter",
            title="Invalid parameter",
            status=400,
            detail=detail,
            field=field,
        )
    )


def _on_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    detail = exc.detail if exc.detail and exc.detail != title else title
    if status == 413:
        detail = "the request body is larger than http.max_body_size"
    return problem_response(
        ProblemDetail(type=PROBLEM_TYPE + slug, title=title, status=status, detail=detail),
        dict(exc.headers or {}),
    )


def _on_store(_: Request[Any, Any, Any], exc: StoreError) -> Response[Any]:
    log.error("store failure answered 503: %s", exc)
    return problem_response(
        ProblemDetail(
            type=PROBLEM_TYPE + "temporarily-unavailable",
            title="Temporarily unavailable",
            status=503,
            detail="a local fault stopped the gateway from storing or reading this; "
            "nothing was accepted, please retry",
        ),
        {"Retry-After": "5"},
    )


def _on_rejected(_: Request[Any, Any, Any], exc: Rejected) -> Response[Any]:
    problem = rejected_problem(exc.verdict)
    return problem_response(problem.detail, problem.headers)


def rejected_problem(verdict: Reject) -> Problem:
    """A policy ``Reject`` as HTTP: temporary (4xx SMTP) → 503, permanent → 422."""
    if verdict.is_temporary:
        return Problem(
            503, "temporarily-refused", "Temporarily refused", verdict.text, headers=retry_after(60)
        )
    return Problem(422, "refused-by-policy", "Refused by policy", verdict.text)


def _on_hook_error(_: Request[Any, Any, Any], exc: HookError) -> Response[Any]:
    log.error("plugin failure answered 503: %s", exc)
    return problem_response(
        ProblemDetail(
            type=PROBLEM_TYPE + "temporarily-unavailable",
            title="Temporarily unavailable",
            status=503,
            detail="a plugin failed while checking this message; nothing was accepted, retry",
        ),
        {"Retry-After": "5"},
    )


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        ProblemDetail(
            type=PROBLEM_TYPE + "internal-error",
            title="Internal error",
            status=500,
            detail="an unexpected error occurred; it has been logged",
        )
    )


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    StoreError: _on_store,
    Rejected: _on_rejected,
    HookError: _on_hook_error,
    Exception: _on_unexpected,
}
"""The one error map: ``Litestar(exception_handlers=EXCEPTION_HANDLERS)``."""
