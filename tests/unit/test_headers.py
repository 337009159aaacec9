"""gateway/headers.py: the From domain, parsed once per distinct From field."""

from __future__ import annotations

import pytest

from gateway import headers


@pytest.mark.parametrize(
    ("raw", "domain"),
    [
        (b"From: a@Example.COM\r\n\r\nbody", "example.com"),
        (b'Subject: x\r\nfrom: "News, Inc." <n@news.example.org.>\r\n\r\n', "news.example.org"),
        (b"From: Folded\r\n <f@fold.example>\r\n\r\n", "fold.example"),
        (b"Subject: no from\r\n\r\nFrom: body@not.header\r\n", ""),
        (b"From: undisclosed-recipients:;\r\n\r\n", ""),
    ],
)
def test_from_domain(raw: bytes, domain: str) -> None:
    assert headers.from_domain(raw) == domain
    assert headers.from_domain(raw) == domain, "the cached answer is the same"


def test_each_distinct_from_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = headers._parse_from_domain
    monkeypatch.setattr(headers, "_parse_from_domain", lambda f: parsed.append(f) or real(f))
    monkeypatch.setattr(headers, "_FROM_DOMAINS", {})
    for i in range(5):
        assert headers.from_domain(b"From: <bulk@example.net>\r\nSubject: %d\r\n\r\n" % i)
    assert parsed == [b"<bulk@example.net>"]
