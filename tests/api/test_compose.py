"""The MIME composer: what it writes must read back, through Python's own parser, as the exact
values it was given — for every kind of text a sender may put in a header or body."""

from __future__ import annotations

import email
import random
from email import policy
from email.header import decode_header, make_header

import msgspec
import pytest

from gateway.api.compose import compose, unstructured
from gateway.ingress import content_problem


class Who(msgspec.Struct):
    email: str
    name: str = ""


class File(msgspec.Struct):
    filename: str
    data: bytes
    maintype: str = "application"
    subtype: str = "octet-stream"
    content_id: str | None = None


def build(**fields: object) -> bytes:
    base: dict[str, object] = {
        "sender": Who("app@example.com", "App"),
        "to": [Who("ann@example.org")],
        "cc": [],
        "reply_to": [],
        "subject": "Hello",
        "headers": [],
        "text": "Hi\n",
        "html": None,
        "attachments": [],
        "now": 1_800_000_000.0,
    }
    base.update(fields)
    return compose(**base)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    assert content_problem(raw) is None, "CRLF only, no NUL"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")), "RFC 5322 line limit"
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert not parsed.defects, parsed.defects
    return parsed


TEXTS = [
    "Your invoice Ω",
    "plain ascii subject",
    "Ünïcödé everywhere — «quotes» and emoji 🎉 mixed with ASCII words",
    "日本語の件名はとても長いのでいくつかのエンコードされた単語に分割されなければなりません" * 2,
    "=?utf-8?q?not_really_encoded?= but looks like it",
    "a" * 200,
    "double  spaces and trailing space ",
    "word " * 60,
    "x" * 990,
]


@pytest.mark.parametrize("subject", TEXTS)
def test_subjects_and_headers_read_back_exactly(subject: str) -> None:
    parsed = parse(build(subject=subject, headers=[("X-Note", subject)]))
    assert parsed["Subject"] == subject
    assert parsed["X-Note"] == subject
    assert bytes(parsed).isascii()


@pytest.mark.parametrize(
    "name",
    ["Ann Example", "Dr. Who", 'Ann "the boss" O\'Neil', "Zoë Ça, Jr.", "back\\slash", "李小龙"],
)
def test_display_names_read_back_exactly(name: str) -> None:
    parsed = parse(build(to=[Who("ann@example.org", name), Who("bob@example.net")] * 4))
    to = parsed["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to[:2]] == [
        (name, "ann@example.org"),
        ("", "bob@example.net"),
    ]
    assert len(to) == 8


@pytest.mark.parametrize(
    "body",
    [
        "short ascii\nlines\n",
        "a line of " + "x" * 1200 + "\n",
        "Grüße aus Köln\n" * 40,
        "中文内容" * 500,
        "trailing spaces   \nand tabs\t\n.leading dot\n",
        "no final newline",
        "mixed\r\nline\rends\n",
    ],
)
def test_text_and_html_bodies_read_back(body: str) -> None:
    parsed = parse(build(text=body, html=f"<p>{body}</p>"))
    assert parsed.get_content_type() == "multipart/alternative"

    def normalized(text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text if text.endswith("\n") else text + "\n"

    expected = normalized(body)
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert html.get_content().replace("\r\n", "\n") == normalized(f"<p>{body}</p>")


def test_structure_with_inline_and_attached_files() -> None:
    files = [
        File("invoice.pdf", b"%PDF-1.4 fake", "application", "pdf"),
        File("logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image", "png", "logo"),
        File("Résumé «final».txt", "héllo".encode(), "text", "plain"),
    ]
    parsed = parse(build(text="t", html='<img src="cid:logo">', attachments=files))
    assert parsed.get_content_type() == "multipart/mixed"
    kinds = [p.get_content_type() for p in parsed.walk()]
    assert kinds == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
        "text/plain",
    ]
    parts = {p.get_filename(): p for p in parsed.walk() if p.get_filename()}
    assert parts["invoice.pdf"].get_content() == b"%PDF-1.4 fake"
    assert parts["logo.png"]["Content-ID"] == "<logo>"
    assert parts["logo.png"].get_content_disposition() == "inline"
    assert parts["logo.png"].get_payload(decode=True) == files[1].data
    assert parts["Résumé «final».txt"].get_payload(decode=True) == "héllo".encode()
    assert [p for p in parsed.walk() if p["MIME-Version"]] == [parsed], "top level only"


@pytest.mark.parametrize(
    "filename",
    [
        "Überweisungsbestätigung für das Geschäftsjahr 2026 — Zahlungsübersicht "
        "und Mahnstufen 🎉 " * 3 + "ä.pdf",
        "a" * 240 + '"quoted" \\ name.txt',
        "中文" * 100,
    ],
)
def test_long_file_names_are_split_into_rfc_2231_continuations(filename: str) -> None:
    raw = build(text="t", attachments=[File(filename[:255], b"data")])
    parsed = parse(raw)  # every line within 998 octets
    [part] = [p for p in parsed.walk() if p.get_filename()]
    assert part.get_filename() == filename[:255]
    assert b"filename*0" in raw


def test_inline_files_without_html_become_attachments() -> None:
    parsed = parse(build(text="t", attachments=[File("a.png", b"x", "image", "png", "a")]))
    kinds = [p.get_content_type() for p in parsed.walk()]
    assert kinds == ["multipart/mixed", "text/plain", "image/png"]


def test_random_unicode_headers_round_trip() -> None:
    rng = random.Random(20261123)
    alphabet = "abc XYZ 019 ,;:\"'()<>@.\\ éüß Ωж 中文 🎉 =?_"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))).strip()
        if not text:
            continue
        folded = unstructured("Subject", text)
        # Over 78 only where one token (after the field name) cannot be split.
        lines = [line.rstrip() for line in folded.split("\r\n")]
        assert all(len(line) <= 78 or len(line.split()) <= 2 for line in lines)
        name = text[:16]
        parsed = parse(build(subject=text, to=[Who("a@example.org", name)]))
        assert parsed["Subject"] == text, repr(text)
        # Python's phrase parser re-tokenizes decoded specials, so decode the words directly.
        head = build(to=[Who("a@example.org", name)]).split(b"\r\nSubject:")[0]
        phrase = head.split(b"To: ", 1)[1].replace(b"\r\n ", b" ").rpartition(b" <")[0]
        decoded = str(make_header(decode_header(phrase.decode())))
        if phrase.startswith(b'"'):
            decoded = decoded[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        assert decoded == name, repr(name)
