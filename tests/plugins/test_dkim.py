"""plugins/dkim.py: mail received at a real sink carries DKIM signatures that verify with
dkimpy's verifier and with Perl's Mail::DKIM (an independent implementation), RSA-2048 and
ed25519, over SMTP and HTTP. Keys are generated per test; none is committed."""

from __future__ import annotations

import base64
import shutil
import smtplib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from gateway_plugins.dkim import (
    _PLACEHOLDER,
    HEADER_NAME,
    Settings,
    Signer,
    dns_txt_record,
    from_domain,
    relaxed_body,
    relaxed_header_value,
    split_message,
)
from gateway_plugins.dkim import _with_b_value as _with_b_value

from gateway.clock import FakeClock
from gateway.config import ConfigError
from gateway.dkim_keys import keygen
from gateway.ops.reload import reload_from
from gateway.server import Gateway
from tests.api.conftest import API_CONFIG, KEYS, _key_tables
from tests.conftest import RELAY_TO_SINK, GatewayThread, Sink, make_config

VERIFIER = Path(__file__).with_name("dkim_verify.pl")

RELAY = (
    RELAY_TO_SINK
    + """
[plugins.dkim]
key_dir = "{key_dir}"
selectors = {selectors}
"""
)

BODY = (
    b"From: Example News <news@example.com>\r\n"
    b"To: user@example.org\r\n"
    b"Subject: Signed   and\r\n folded\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Trailing spaces   \r\n\r\nand blank lines\r\n\r\n\r\n"
)


class Keys:
    """Keys written as ``<key_dir>/<domain>/<file>``, and the TXT records to "publish"."""

    def __init__(self, key_dir: Path) -> None:
        self.dir = key_dir
        self.records: dict[str, str] = {}

    def add(self, domain: str, file_name: str, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        (self.dir / domain).mkdir(parents=True, exist_ok=True)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (self.dir / domain / file_name).write_bytes(pem)
        selector = file_name.split(".")[0]
        self.records[f"{selector}._domainkey.{domain}"] = dns_txt_record(key)

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        record = self.records.get(name.decode().rstrip("."))
        return record.encode() if record is not None else None

    def key_file(self) -> Path:
        path = self.dir.parent / "published.txt"
        path.write_text("".join(f"{name}\t{txt}\n" for name, txt in self.records.items()))
        return path


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def keys(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Keys:
    made = Keys(tmp_path / "keys")
    made.add("example.com", "rsa2025.pem", rsa_key)
    made.add("example.com", "ed2025.ed25519.pem", ed25519.Ed25519PrivateKey.generate())
    return made


def signatures(data: bytes) -> list[dict[bytes, bytes]]:
    return [
        dkim.util.parse_tag_value(value)
        for name, value in dkim.rfc822_parse(data)[0]
        if name.lower() == b"dkim-signature"
    ]


def verify_with_dkimpy(data: bytes, keys: Keys) -> list[bool]:
    """One result per signature; a body hash mismatch (raised by dkimpy) counts as False."""
    results = []
    for i in range(len(signatures(data))):
        try:
            results.append(dkim.DKIM(data).verify(idx=i, dnsfunc=keys.dnsfunc))
        except dkim.DKIMException:
            results.append(False)
    return results


def verify_with_mail_dkim(data: bytes, keys: Keys) -> dict[str, str]:
    """selector → Mail::DKIM's result. Missing Perl or Mail::DKIM is a failure, not a skip:
    ``scripts/test.sh`` installs them (libmail-dkim-perl)."""
    perl = shutil.which("perl")
    assert perl, "perl is missing: run scripts/test.sh (installs libmail-dkim-perl)"
    run = subprocess.run(
        [perl, str(VERIFIER), str(keys.key_file())],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, (
        f"Mail::DKIM verifier failed (scripts/test.sh installs libmail-dkim-perl): {run.stderr!r}"
    )
    results = {}
    for line in run.stdout.decode().splitlines():
        _domain, selector, _algorithm, result, detail = ([*line.split(" ", 4), ""])[:5]
        results[selector] = result if result == "pass" else f"{result}: {detail}"
    return results


def independent_results_ok(results: dict[str, str], expected: list[str]) -> None:
    assert sorted(results) == sorted(expected)
    for selector, result in results.items():
        # Debian 12's Mail::DKIM (1.20230212) predates its ed25519 support and says so; a
        # newer one must pass it.
        if selector.startswith("ed") and "unsupported algorithm" in result:
            continue
        assert result == "pass", (selector, result)


def start_relay(
    tmp_path: Path, sink: Sink, gateway_factory: Callable[..., GatewayThread], keys: Keys, sel: str
) -> GatewayThread:
    config = make_config(tmp_path, RELAY, port=sink.port, key_dir=keys.dir, selectors=sel)
    # t= is checked against the real time by verifiers: start the fake clock there.
    return gateway_factory(config, clock=FakeClock(time.time()), deliver=False)


def test_smtp_mail_is_dual_signed_and_both_signatures_verify(
    tmp_path, sink: Sink, gateway_factory, keys: Keys
) -> None:
    gw = start_relay(tmp_path, sink, gateway_factory, keys, '["rsa2025", "ed2025"]')
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("bounce@example.com", ["user@example.org"], BODY)
    gw.call(gw.gateway.dispatcher.run_once())
    (received,) = sink.messages
    sigs = signatures(received.data)
    assert [(s[b"s"], s[b"a"]) for s in sigs] == [
        (b"rsa2025", b"rsa-sha256"),
        (b"ed2025", b"ed25519-sha256"),
    ], "in configured order"
    for sig in sigs:
        assert sig[b"c"] == b"relaxed/relaxed" and sig[b"d"] == b"example.com"
        signed = [h.strip() for h in sig[b"h"].split(b":")]
        assert signed.count(b"from") == 2, "From is oversigned"
        assert b"received" not in signed, "the gateway's own trace header is not signed"
        assert {b"to", b"subject", b"message-id"} <= set(signed)
    assert verify_with_dkimpy(received.data, keys) == [True, True]
    independent_results_ok(verify_with_mail_dkim(received.data, keys), ["rsa2025", "ed2025"])

    tampered = received.data.replace(b"and blank lines", b"and blank Lines")
    assert verify_with_dkimpy(tampered, keys) == [False, False]
    assert verify_with_mail_dkim(tampered, keys)["rsa2025"].startswith("fail")
    added_from = b"From: evil@example.net\r\n" + received.data
    assert verify_with_dkimpy(added_from, keys) == [False, False]


def test_http_mail_is_signed_with_the_selected_key_only(
    tmp_path, sink: Sink, gateway_factory, keys: Keys
) -> None:
    toml = API_CONFIG + '\n[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["rsa2025"]\n'
    config = make_config(
        tmp_path,
        toml,
        port=sink.port,
        rate_limit=0.0,
        rate_burst=100,
        acme_keys=_key_tables("acme"),
        globex_keys=_key_tables("globex"),
        key_dir=keys.dir,
    )
    # acme may only send from acme.test: give that domain a key too.
    keys.add("acme.test", "rsa2025.pem", rsa.generate_private_key(65537, 2048))
    clock = FakeClock(time.time())
    gw = gateway_factory(config, clock=clock, deliver=False)
    import httpx

    key = KEYS[("acme", "sender")][0]
    with httpx.Client(
        base_url=f"http://127.0.0.1:{gw.gateway.http_port}",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        sent = client.post(
            "/v1/messages",
            json={
                "from": "app@acme.test",
                "to": ["ann@example.org"],
                "subject": "Receipt",
                "html": "<p>Thanks</p>",
                "text": "Thanks",
            },
        )
    assert sent.status_code == 202, sent.text
    gw.call(gw.gateway.dispatcher.run_once())
    (received,) = sink.messages
    (sig,) = signatures(received.data)
    assert (sig[b"d"], sig[b"s"]) == (b"acme.test", b"rsa2025"), "the ed25519 key is not selected"
    assert verify_with_dkimpy(received.data, keys) == [True]
    assert verify_with_mail_dkim(received.data, keys) == {"rsa2025": "pass"}


def test_subdomains_sign_with_the_parent_and_unknown_domains_go_out_unsigned(
    tmp_path, sink: Sink, gateway_factory, keys: Keys
) -> None:
    gw = start_relay(tmp_path, sink, gateway_factory, keys, "[]")
    with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
        client.sendmail("a@x.net", ["sub@example.org"], BODY.replace(b"@example", b"@news.example"))
        client.sendmail("a@x.net", ["other@example.org"], BODY.replace(b"example.com", b"x.net"))
    gw.call(gw.gateway.dispatcher.run_once())
    (from_subdomain,) = sink.to("sub@example.org")
    assert [s[b"d"] for s in signatures(from_subdomain.data)] == [b"example.com"] * 2
    assert verify_with_dkimpy(from_subdomain.data, keys) == [True, True]
    (unknown,) = sink.to("other@example.org")
    assert signatures(unknown.data) == []


def test_dkim_is_off_without_its_table(tmp_path) -> None:
    gateway = Gateway(make_config(tmp_path))
    assert gateway.pm.get_plugin("dkim") is None and gateway.pm.is_blocked("dkim")


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"key_dir": "/nonexistent/keys"}, r"plugins\.dkim\.key_dir: .* is not a directory"),
        ({"canonicalization": "loose/simple"}, r"plugins\.dkim\.canonicalization"),
        ({"headers": ["to"], "oversign": []}, r"From must be signed"),
        ({"headers": ["from", "received"]}, r"must not sign received"),
    ],
)
def test_bad_settings_name_the_key(keys: Keys, settings: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Signer(Settings(**{"key_dir": str(keys.dir), **settings}))  # type: ignore[arg-type]


def test_a_key_whose_name_says_another_type_is_refused(keys: Keys) -> None:
    (keys.dir / "example.com" / "ed2025.ed25519.pem").rename(keys.dir / "example.com" / "x.rsa.pem")
    with pytest.raises(ConfigError, match="the file name says rsa but the key is ed25519"):
        Signer(Settings(key_dir=str(keys.dir)))


BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"plain line\r\n",
    b"no final newline",
    b"trailing spaces   \r\ntabs\t\t\r\n\tleading tab\r\n",
    b"double  spaces and   runs\r\n \r\n\r\n",
    b"<p>  indented html</p>\r\n    <a href='x'>link</a>  \r\n\r\n\r\n",
    b"mixed \t \t whitespace\r\nend \t",
]


@pytest.mark.parametrize("body", BODIES)
def test_fast_relaxed_body_matches_dkimpy(body: bytes) -> None:
    reference = dkim.canonicalization.Relaxed.canonicalize_body(body)
    assert relaxed_body(body) == reference


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n",
        b"From: a@example.com\r\nSubject: folded\r\n  more\r\n\r\n\r\nbody after blank\r\n",
        b"From: a@example.com\r\n\r\n",
        b"From: a@example.com\r\nX: y\r\n",
        b"From: a@example.com\nSubject: bare LF\n\nbody\n",
    ],
)
def test_message_split_matches_dkimpy(raw: bytes) -> None:
    assert split_message(raw) == dkim.rfc822_parse(raw)


HEADER_VALUES = [
    b" plain\r\n",
    b"   leading and trailing   \r\n",
    b" folded\r\n\tover\r\n   three lines\r\n",
    b"\ttabs\tinside\t\r\n",
    b" bare\nLF fold\r\n",
    b"\r\n",
]


@pytest.mark.parametrize("value", HEADER_VALUES)
def test_fast_relaxed_header_value_matches_dkimpy(value: bytes) -> None:
    [(_, reference)] = dkim.canonicalization.Relaxed.canonicalize_headers([(b"X", value)])
    assert relaxed_header_value(value) == reference


TRICKY = [
    # Repeated and oversigned fields, odd spacing and folds, a From with a display name.
    b'From: "News, Inc." <news@example.com>\r\nTo: a@example.org\r\nTo:  b@example.org\r\n'
    b"Subject:   spaced \t out\r\n  and folded\r\nsubject: second\r\n"
    b"Message-ID: <t1@example.com>\r\nX-Other: not signed\r\n\r\nbody\r\n",
    b"FROM:news@example.com\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n",
    b"From: news@example.com\r\nReply-To: r@example.com\r\nList-Unsubscribe: <https://u.example>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n" + b"x" * 5000 + b"\r\n",
]


@pytest.mark.parametrize("raw", TRICKY)
def test_signatures_on_tricky_headers_verify_with_dkimpy(raw: bytes, keys: Keys) -> None:
    signer = Signer(Settings(key_dir=str(keys.dir), selectors=["rsa2025", "ed2025"]))
    assert from_domain(raw) == "example.com"
    signed = signer.sign(raw, signer.keys_for(raw), time.time()) + raw
    assert verify_with_dkimpy(signed, keys) == [True, True]


def test_sighup_reloads_the_keys_so_a_rotation_signs_without_a_restart(
    tmp_path, sink: Sink, gateway_factory, keys: Keys
) -> None:
    toml = f'[gateway]\nhostname = "gw.test"\ndata_dir = "{tmp_path / "data"}"\n' + RELAY.format(
        port=sink.port, key_dir=keys.dir, selectors="[]"
    )
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(toml)
    gw = gateway_factory(
        make_config(tmp_path, RELAY, port=sink.port, key_dir=keys.dir, selectors="[]"),
        clock=FakeClock(time.time()),
        deliver=False,
    )

    def send_one() -> list[bytes]:
        with smtplib.SMTP("127.0.0.1", gw.port("dev")) as client:
            client.sendmail("bounce@example.com", ["user@example.org"], BODY)
        gw.call(gw.gateway.dispatcher.run_once())
        return sorted(s[b"s"] for s in signatures(sink.messages[-1].data))

    assert send_one() == [b"ed2025", b"rsa2025"]
    new, superseded = keygen(keys.dir, "example.com", "rsa2026", "rsa", 1024)
    assert [k.selector for k in superseded] == ["rsa2025"]
    assert send_one() == [b"ed2025", b"rsa2025"]  # loaded at start-up: unchanged until reload
    # What SIGHUP runs; the DKIM plugin's gateway_reload re-reads the keys.
    assert gw.call(reload_from(gw.gateway, str(config_file)))
    assert send_one() == [b"ed2025", b"rsa2026"]
    keys.records[new.record_name] = new.record
    assert all(verify_with_dkimpy(sink.messages[-1].data, keys))


@pytest.mark.parametrize("b_length", [0, 1, 67, 68, 69, 70, 71, 138, 139, 140, 141, 142, 344, 88])
@pytest.mark.parametrize("headers", [1, 3, 8])
def test_signature_fields_are_folded_exactly_as_dkimpy_folds_them(
    b_length: int, headers: int
) -> None:
    """The b= value is folded from the placeholder's fold, not folded again: same bytes."""
    names = b" : ".join([b"from", b"to", b"subject", b"list-unsubscribe-post"][:headers] * 2)
    head = b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=rsa2025; t=1767225600; "
    head += b"h=" + names + b"; bh=" + base64.b64encode(b"x" * 32) + b"; b="
    folded = dkim.fold(head + _PLACEHOLDER, namelen=len(HEADER_NAME))
    b_value = (b"AbCd+/09" * 50)[:b_length]
    expected = dkim.fold(head + b_value + b"\r\n", namelen=len(HEADER_NAME))
    assert _with_b_value(folded, head, b_value) == expected
