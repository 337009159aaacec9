"""What the hosted-page tests share: the ``[plugins.audience]`` keys for the pages, and reading
the link out of a confirmation mail received at the sink."""

from __future__ import annotations

import email
import email.policy
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sink

KEY = secrets.token_urlsafe(32)


def pages_toml(base_url: str = "http://127.0.0.1") -> str:
    """Lines for the ``[plugins.audience]`` table the fixture opened last."""
    return (
        f'keys = {{ k1 = "{KEY}" }}\nbase_url = "{base_url}"\nmail_from = "news@acme.test"\n'
        'branding = { acme = { name = "Acme News", color = "#1f4e9e" } }\n'
    )


def links_to(sink: Sink, address: str) -> list[str]:
    """The page links in every mail the sink got for ``address``, in order."""
    found = []
    for received in sink.to(address):
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        body = message.get_body(("plain",))
        assert body is not None
        found += re.findall(r"https?://\S+/p/\w+/[A-Za-z0-9_-]+", body.get_content())
    return found


AXE = Path(__file__).resolve().parents[3] / ".npm-tools/node_modules/axe-core/axe.min.js"


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page Playwright shows now."""
    if not AXE.is_file():
        pytest.fail("axe-core is missing: run scripts/test.sh (it installs it from npm)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
