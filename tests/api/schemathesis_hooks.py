"""Hooks for the schemathesis CLI run in ``test_schemathesis.py`` (``SCHEMATHESIS_HOOKS``).

A real client makes a new ``Idempotency-Key`` for each new request; schemathesis would reuse
one generated value for different bodies, which the API rightly refuses (422, as the IETF
Idempotency-Key draft asks). So every generated key gets a unique suffix; the header is still
sent, in every generated shape the schema allows.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

_serial = itertools.count()


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str):
        case.headers["Idempotency-Key"] = f"{key[:200]}-{next(_serial)}"
