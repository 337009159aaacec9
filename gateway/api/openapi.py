"""The served OpenAPI document made the contract: what litestar cannot see is added here.

Request bodies are decoded by the handlers themselves (strictly, naming the field), so their
schemas come from the Structs through msgspec; addresses and tags get the patterns the handlers
check; every operation lists the problem statuses it can answer, the ``Idempotency-Key``
request header and the ``Idempotent-Replayed`` / ``Retry-After`` response headers where they
apply, and ``POST /v1/messages`` its raw-message query parameters. ``tests/api`` runs
schemathesis against the served document to keep it exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, cast, get_args

import msgspec
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
)

from gateway.api.messages import MAX_SCHEDULE, SEND_AT_PATTERN, BatchRequest, SendRequest
from gateway.api.mime import RESERVED_HEADERS
from gateway.api.problems import MEDIA_TYPE, ProblemDetail
from gateway.api.suppressions import SuppressionAdd
from gateway.store.base import SCOPE_PATTERN, SuppressionReason
from gateway.streams import TRANSACTIONAL

Body = tuple[str, str, type[msgspec.Struct] | None, tuple[str, ...]]
"""(path, method, request Struct or None, extra media types) of a hand-decoded body."""

BODIES: list[tuple[str, type[msgspec.Struct] | None, tuple[str, ...]]] = [
    ("/v1/messages", SendRequest, ("message/rfc822",)),
    ("/v1/messages/batch", BatchRequest, ()),
    ("/v1/suppressions", SuppressionAdd, ()),
    ("/v1/suppressions/import", None, ("text/csv",)),
]
"""(path of a POST, its JSON Struct or ``None``, other media types it takes as a string)."""

ERRORS = {
    "400": "Malformed request (invalid JSON, a duplicate key, a bad header or parameter)",
    "401": "No valid API key",
    "403": "The key lacks the scope this endpoint needs",
    "413": "Request or message too large",
    "422": "A field is invalid; `field` names it",
    "429": "Rate limit reached; see Retry-After",
    "503": "Local fault, nothing was stored; retry after Retry-After",
}
NOT_FOUND = "No such resource for this key's tenant (another tenant's is not found either)"
UNSUPPORTED = "Unsupported Content-Type"
CONFLICT = "A concurrent request with the same Idempotency-Key is still being processed"

LOCAL_CHARS = "A-Za-z0-9!#$%&'*+/=?^_`{|}~\\-\\u00a0-\\u2027\\u202a-\\uffff"
LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?"
EMAIL_PATTERN = (
    f"^[{LOCAL_CHARS}]{{1,32}}(?:\\.[{LOCAL_CHARS}]{{1,31}})?@(?:{LABEL}\\.){{1,3}}{LABEL}$"
)
"""Addresses ``check_address`` accepts (it takes more: longer labels and local parts, and
internationalized domains as IDNA): a local part without leading, trailing or doubled dots
and two to four DNS labels, short enough that no length limit can refuse it."""
CSV_ADDRESS = EMAIL_PATTERN[1:-1]
CSV_PATTERN = (
    f"^email(?:\\r?\\n{CSV_ADDRESS})*\\r?\\n?$|"
    f"^email,reason(?:\\r?\\n{CSV_ADDRESS},(?:{'|'.join(get_args(SuppressionReason))})?)*"
    "\\r?\\n?$"
)
"""A suppression import: a header row naming ``email`` (and ``reason``), one address a row."""
TAG_PATTERN = "^[A-Za-z0-9_.:/@+-]{1,64}$"
HEADER_TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
"""No control character but tab: what ``check_header_text`` accepts."""
_CONTROLS = "\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f\\u2028\\u2029"
_SPACES = "\\t \\u00a0\\u1680\\u2000-\\u200a\\u202f\\u205f\\u3000"
NOT_BLANK_TEXT_PATTERN = f"^[^{_CONTROLS}]*[^{_CONTROLS}{_SPACES}][^{_CONTROLS}]*$"
"""Header text with something in it but white space (what ``str.strip`` leaves non-empty)."""
HEADER_NAME_PATTERN = "^[!-9;-~]{1,76}$"


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


RESERVED_HEADER_PATTERN = f"^(?:{'|'.join(_any_case(n) for n in sorted(RESERVED_HEADERS))})$"
"""Header names set from the request's own fields or by the gateway, in any case."""
TOKEN = "[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
CONTENT_ID_PATTERN = "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,200}$"
METADATA = {
    "type": "object",
    "maxProperties": 20,
    "propertyNames": {"minLength": 1, "maxLength": 64},
    "additionalProperties": {"type": "string", "maxLength": 1024},
}
SEND_AT: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "format": "date-time", "pattern": SEND_AT_PATTERN},
        {"type": "null"},
    ],
    "default": None,
    "description": "Hold the message until then: an RFC 3339 time with a zone, no leap "
    "second, at most 30 days ahead (`x-max-ahead-seconds`; a later time is a 422)",
    "x-max-ahead-seconds": int(MAX_SCHEDULE),
}


def declared_bodies(routes: Sequence[Any]) -> list[Body]:
    """Bodies that handlers decode themselves and declare as ``opt={"body": Struct}`` (plugin
    controllers do this), for the OpenAPI document."""
    found: list[Body] = []
    for route in routes:
        for handler in getattr(route, "route_handlers", ()):
            struct = handler.opt.get("body")
            if struct is None or not handler.include_in_schema:
                continue
            for method in sorted(handler.http_methods):
                # The document names path parameters without their type ({id}, not {id:int}).
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
                found.append((path, method, struct, ()))
    return found


def complete_document(
    document: OpenAPI, declared: Sequence[Body] = (), streams: Sequence[str] = ()
) -> None:
    """Add everything above to ``document`` (litestar's generated one), in place; ``declared``
    are the bodies plugin handlers declare (``declared_bodies``), ``streams`` the message
    streams the tenants configure."""
    _add_bodies(document, [(p, "POST", s, e) for p, s, e in BODIES] + list(declared))
    _constrain_schemas(cast(dict[str, Any], document.components.schemas), streams)
    for path, item in (document.paths or {}).items():
        for method, operation in (
            ("get", item.get),
            ("post", item.post),
            ("put", item.put),
            ("patch", item.patch),
            ("delete", item.delete),
        ):
            if operation is not None:
                _add_responses(path, method, operation)
    send = document.paths["/v1/messages"].post if document.paths else None
    if send is not None:
        send.parameters = [*(send.parameters or []), *_raw_message_parameters(streams)]
    for item in (document.paths or {}).values():
        for operation in (item.get, item.post, item.delete):
            for parameter in (operation.parameters or []) if operation is not None else ():
                if isinstance(parameter, Parameter) and parameter.name == "scope":
                    parameter.schema = Schema(type=OpenAPIType.STRING, pattern=SCOPE_PATTERN)


def _add_bodies(document: OpenAPI, bodies: list[Body]) -> None:
    structs: list[type[msgspec.Struct]] = [ProblemDetail]
    structs += [struct for _, _, struct, _ in bodies if struct is not None]
    _, schemas = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    # msgspec's JSON Schema is valid OpenAPI 3.1; litestar serializes plain dicts as they are.
    document.components.schemas.update(cast(dict[str, Schema], schemas))
    for path, method, struct, extra in bodies:
        item = document.paths[path] if document.paths else None
        operation = getattr(item, method.lower()) if item is not None else None
        if operation is None:
            raise RuntimeError(f"no {method} {path} to document")
        content: dict[str, OpenAPIMediaType] = {}
        if struct is not None:
            ref = Reference(ref=f"#/components/schemas/{struct.__name__}")
            content["application/json"] = OpenAPIMediaType(schema=ref)
        for media_type in extra:
            pattern = CSV_PATTERN if media_type == "text/csv" else None
            schema = Schema(type=OpenAPIType.STRING, pattern=pattern)
            content[media_type] = OpenAPIMediaType(schema=schema)
        operation.request_body = RequestBody(content=content, required=True)


def _stream_names(streams: Sequence[str]) -> dict[str, Any]:
    """A send's ``stream``: one the tenants configure; ``null`` or "" is ``transactional``."""
    names = sorted({TRANSACTIONAL, "", *streams})
    return {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}], "default": None}


def _constrain_schemas(schemas: dict[str, Any], streams: Sequence[str] = ()) -> None:
    """Rules msgspec's schemas cannot know: addresses, tags, one-line header text, header
    names, metadata and attachment limits, ``send_at``, scopes and streams."""
    schemas["EmailAddress"] = {"type": "string", "pattern": EMAIL_PATTERN, "maxLength": 254}
    address = {"$ref": "#/components/schemas/EmailAddress"}
    mailbox = {"$ref": "#/components/schemas/Mailbox"}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("anyOf", "oneOf"):
                branches = node.get(key)
                if isinstance(branches, list) and mailbox in branches:
                    node[key] = [address if b == {"type": "string"} else b for b in branches]
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(schemas)
    properties = {
        name: s.get("properties", {}) for name, s in schemas.items() if isinstance(s, dict)
    }
    if "email" in properties.get("Mailbox", {}):
        properties["Mailbox"]["email"] = address
    if "email" in properties.get("SuppressionIn", {}):
        properties["SuppressionIn"]["email"] = address
    header_text = {"type": "string", "pattern": HEADER_TEXT_PATTERN, "maxLength": 998}
    for name in ("SendRequest", "BatchRequest"):
        fields = properties.get(name, {})
        if "tags" in fields:
            fields["tags"] = {
                "type": "array",
                "maxItems": 10,
                "items": {"type": "string", "pattern": TAG_PATTERN},
            }
        fields["metadata"] = METADATA
        fields["send_at"] = SEND_AT
        fields["stream"] = _stream_names(streams)
        fields["headers"] = {
            "type": "object",
            "propertyNames": {
                "pattern": HEADER_NAME_PATTERN,
                "not": {"pattern": RESERVED_HEADER_PATTERN},
            },
            "additionalProperties": header_text,
            "description": "Extra header fields; names that the request's own fields or the "
            "gateway set (From, Subject, Date, DKIM-Signature...) are refused, in any case",
        }
    if "metadata" in properties.get("BatchRecipient", {}):
        properties["BatchRecipient"]["metadata"] = METADATA
    attachment = properties.get("Attachment", {})
    if attachment:
        attachment["filename"] = {
            "type": "string",
            "pattern": NOT_BLANK_TEXT_PATTERN,
            "maxLength": 255,
        }
        attachment["content"] = {"type": "string", "pattern": BASE64_PATTERN}
        attachment["content_type"] = {
            "type": "string",
            "pattern": f"^{TOKEN}/{TOKEN}$",
            "not": {"pattern": f"^(?:{_any_case('multipart')}|{_any_case('message')})/"},
            "default": "application/octet-stream",
        }
        attachment["content_id"] = {
            "anyOf": [{"type": "string", "pattern": CONTENT_ID_PATTERN}, {"type": "null"}],
            "default": None,
        }
    if "scope" in properties.get("SuppressionIn", {}):
        properties["SuppressionIn"]["scope"] = {
            "type": "string",
            "pattern": SCOPE_PATTERN,
            "default": "tenant",
        }
        if name == "SendRequest" and "subject" in fields:
            fields["subject"] = {"type": "string", "pattern": HEADER_TEXT_PATTERN, "maxLength": 998}
    bodies = [
        {"required": [body], "properties": {body: {"type": "string"}}} for body in ("text", "html")
    ]
    if "BatchRequest" in schemas:
        schemas["BatchRequest"]["anyOf"] = bodies
    if "SendRequest" in schemas:
        schemas["SendRequest"]["allOf"] = [
            {"anyOf": bodies},
            {
                "anyOf": [
                    {"required": [kind], "properties": {kind: {"minItems": 1}}}
                    for kind in ("to", "cc", "bcc")
                ]
            },
        ]
    if "detail" in properties.get("SuppressionIn", {}):
        properties["SuppressionIn"]["detail"] = {
            "type": "string",
            "pattern": HEADER_TEXT_PATTERN,
            "maxLength": 500,
            "default": "",
        }
    if "name" in properties.get("Mailbox", {}):
        properties["Mailbox"]["name"] = {
            "type": "string",
            "pattern": HEADER_TEXT_PATTERN,
            "maxLength": 200,
            "default": "",
        }


def _header(description: str, schema: Schema) -> OpenAPIHeader:
    return OpenAPIHeader(schema=schema, description=description)


PROBLEM_REF = "#/components/schemas/ProblemDetail"
_RETRY_AFTER: dict[str, OpenAPIHeader | Reference] = {
    "Retry-After": _header("Seconds to wait before retrying", Schema(type=OpenAPIType.INTEGER))
}
_IDEMPOTENT = {"/v1/messages", "/v1/messages/batch"}
_TAKES_MEDIA_TYPE = {"/v1/messages", "/v1/suppressions/import"}


def _add_responses(path: str, method: str, operation: Operation) -> None:
    responses = operation.responses if operation.responses is not None else {}
    operation.responses = responses
    problem = {
        MEDIA_TYPE: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/ProblemDetail"))
    }
    errors = dict(ERRORS)
    if "{" in path or path.startswith("/v1/domains"):
        errors["404"] = NOT_FOUND
    if method == "post" and path in _TAKES_MEDIA_TYPE:
        errors["415"] = UNSUPPORTED
    if method == "post" and path in _IDEMPOTENT:
        errors["409"] = CONFLICT
    for status, description in sorted(errors.items()):
        headers = _RETRY_AFTER if status in ("429", "503") else None
        responses[status] = OpenAPIResponse(
            description=description, content=problem, headers=headers
        )
    if method == "post" and path in _IDEMPOTENT:
        operation.parameters = [
            *(operation.parameters or []),
            Parameter(
                name="Idempotency-Key",
                param_in="header",
                required=False,
                description="Retry safely: the same key and request within 24 hours answers "
                "what the first one did, and never queues twice",
                schema=Schema(type=OpenAPIType.STRING, pattern="^[\\x21-\\x7e]{1,255}$"),
            ),
        ]
        accepted = responses.get("202")
        if isinstance(accepted, OpenAPIResponse):
            accepted.headers = {
                **(accepted.headers or {}),
                "Idempotent-Replayed": _header(
                    "`true` when this answer repeats an earlier request's (same Idempotency-Key)",
                    Schema(type=OpenAPIType.STRING, enum=["true"]),
                ),
            }


def _raw_message_parameters(streams: Sequence[str]) -> list[Parameter]:
    """Query parameters of a ``message/rfc822`` send (ignored for JSON)."""
    address = Reference(ref="#/components/schemas/EmailAddress")
    return [
        Parameter(
            name="from",
            param_in="query",
            description="message/rfc822 only: the envelope sender (default: the From header)",
            schema=address,
        ),
        Parameter(
            name="to",
            param_in="query",
            description="message/rfc822 only: envelope recipients, repeated (default: To and Cc)",
            schema=Schema(type=OpenAPIType.ARRAY, items=address),
            explode=True,
        ),
        Parameter(
            name="tag",
            param_in="query",
            description="message/rfc822 only: tags, repeated",
            schema=Schema(
                type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING, pattern=TAG_PATTERN)
            ),
            explode=True,
        ),
        Parameter(
            name="stream",
            param_in="query",
            description="message/rfc822 only: the tenant's message stream (default: the "
            "message's stream header, else transactional)",
            schema=Schema(type=OpenAPIType.STRING, enum=sorted({TRANSACTIONAL, "", *streams})),
        ),
        Parameter(
            name="send_at",
            param_in="query",
            description="message/rfc822 only: hold until this RFC 3339 time (with a zone, no "
            "leap second, at most 30 days ahead: `x-max-ahead-seconds`)",
            schema=cast(Schema, SEND_AT["anyOf"][0] | {"x-max-ahead-seconds": int(MAX_SCHEDULE)}),
        ),
    ]
