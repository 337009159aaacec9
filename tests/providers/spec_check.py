"""Check an HTTP request against a provider's published OpenAPI description.

The mock provider servers call :func:`request_problems` for every request they get: the path
and method must be an operation of the spec, required header parameters and the declared
authentication must be present, and the body (JSON, or multipart/form-data decoded field by
field) must validate against the operation's request schema with ``jsonschema``. So a field
that is missing or misnamed, or of the wrong type, makes the mock answer 400 and the test fail.

Specs come from ``/work/shared/specs`` (see its README.md and SOURCES.md).
"""

from __future__ import annotations

import email.parser
import email.policy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPECS = Path(__file__).resolve().parents[3] / "shared" / "specs"
if not SPECS.is_dir():  # a worktree under /work/wt/<name>, or a clone beside shared/
    SPECS = Path("/work/shared/specs")

SENDGRID = SPECS / "sendgrid" / "tsg_mail_v3.yaml"
MAILGUN = SPECS / "mailgun" / "openapi.yaml"
POSTMARK = SPECS / "postmark" / "server-sending.strict.openapi.yaml"
SESV2 = SPECS / "ses" / "sesv2-2019-09-27.service-2.json"


@functools.cache
def load_spec(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as f:
        spec: dict[str, Any] = yaml.load(f, Loader=loader)
    return spec


def _resolve(spec: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """Inline local ``$ref``s (the request schemas we use are not recursive)."""
    if depth > 40:
        raise ValueError("$ref nesting too deep")
    if isinstance(node, dict):
        if "$ref" in node and isinstance(node["$ref"], str) and node["$ref"].startswith("#/"):
            target: Any = spec
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            resolved = _resolve(spec, target, depth + 1)
            return {**resolved, **_resolve(spec, siblings, depth + 1)} if siblings else resolved
        return {k: _resolve(spec, v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(spec, v, depth + 1) for v in node]
    return node


def find_operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    for template, item in spec.get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            operation: dict[str, Any] = item[method.lower()]
            return operation
    return None


def request_problems(
    spec_path: Path, method: str, path: str, headers: dict[str, str], body: bytes
) -> list[str]:
    """Everything wrong with this request according to the spec (empty when it conforms)."""
    spec = load_spec(spec_path)
    operation = find_operation(spec, method, path)
    if operation is None:
        return [f"{method} {path} is not an operation of {spec_path.name}"]
    operation = _resolve(spec, operation)
    lower = {k.lower(): v for k, v in headers.items()}
    problems = _auth_problems(spec, operation, lower)
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "header" and parameter.get("required"):
            if not lower.get(parameter["name"].lower()):
                problems.append(f"required header {parameter['name']} is missing")
    request_body = operation.get("requestBody")
    if request_body is None:
        return problems
    content_type = lower.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    content = request_body.get("content", {})
    if media not in content:
        return [*problems, f"content type {media!r} is not one of {sorted(content)}"]
    schema = content[media].get("schema", {})
    try:
        instance = _decode(media, content_type, body, schema)
    except ValueError as e:
        return [*problems, f"body cannot be decoded as {media}: {e}"]
    validator_class = (
        jsonschema.Draft202012Validator
        if str(spec.get("openapi", "")).startswith("3.1")
        else jsonschema.Draft7Validator
    )
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    for error in validator.iter_errors(instance):
        where = "/".join(str(p) for p in error.absolute_path) or "(body)"
        problems.append(f"{where}: {error.message}")
    return problems


def _auth_problems(
    spec: dict[str, Any], operation: dict[str, Any], headers: dict[str, str]
) -> list[str]:
    requirements = operation.get("security", spec.get("security"))
    if not requirements:
        return []
    schemes = spec.get("components", {}).get("securitySchemes", {})
    for requirement in requirements:
        if all(_satisfied(schemes.get(name, {}), headers) for name in requirement):
            return []
    return [f"no credentials for any of {requirements}"]


def _satisfied(scheme: dict[str, Any], headers: dict[str, str]) -> bool:
    if scheme.get("type") == "http":
        expected = str(scheme.get("scheme", "")).lower()
        value = headers.get("authorization", "")
        kind, _, credentials = value.partition(" ")
        return kind.lower() == expected and bool(credentials.strip())
    if scheme.get("type") == "apiKey" and scheme.get("in") == "header":
        return bool(headers.get(str(scheme.get("name", "")).lower()))
    return False


def _decode(media: str, content_type: str, body: bytes, schema: dict[str, Any]) -> Any:
    if media == "application/json":
        try:
            return json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(str(e)) from None
    if media == "multipart/form-data":
        return form_fields(content_type, body, schema)
    raise ValueError(f"no decoder for {media}")


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes, str | None]]:
    """(field name, value bytes exactly as sent, filename) of each part, in order."""
    header = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    )
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise ValueError("no multipart boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(b"\r\n" + delimiter)
    if not chunks[0].startswith(delimiter) or not chunks[-1].startswith(b"--"):
        raise ValueError("malformed multipart body")
    parts = []
    for chunk in [chunks[0][len(delimiter) :], *chunks[1:-1]]:
        head, sep, value = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part has no header block")
        headers = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValueError("a part has no form field name")
        filename = headers.get_param("filename", header="content-disposition")
        parts.append((name, value, filename if isinstance(filename, str) else None))
    return parts


def form_fields(content_type: str, body: bytes, schema: dict[str, Any]) -> dict[str, Any]:
    """A multipart form as the JSON instance its schema describes: a field declared as an
    array collects every value sent under its name, any other field must appear once."""
    properties = schema.get("properties", {})
    fields: dict[str, Any] = {}
    for name, value, filename in multipart_parts(content_type, body):
        text: Any = value.decode("utf-8", "replace") if filename is None else "<file>"
        if properties.get(name, {}).get("type") == "array":
            fields.setdefault(name, []).append(text)
        elif name in fields:
            raise ValueError(f"field {name!r} is sent more than once")
        else:
            fields[name] = text
    return fields
