"""What the hosted-page tests share: the ``[plugins.audience]`` keys for the pages, and reading
the link out of a confirmation mail received at the sink."""

from __future__ import annotations

import email
import email.policy
import re
import secrets

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
