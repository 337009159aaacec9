"""``gateway dkim keygen|list|retire``: a generated key signs (through the DKIM plugin's own
key directory) a message that Mail::DKIM accepts, looking the printed TXT record up in a real
DNS server; rotation keeps the old record published while only the new selector signs."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from gateway_plugins.dkim import Settings, Signer

from gateway.cli import main
from gateway.config import ConfigError, parse_config, plugin_settings
from gateway.dkim_keys import configured_keys, list_keys
from gateway.dnsauth.records import expected_records
from tests.dnsserver import DnsServer

VERIFIER = Path(__file__).with_name("dkim_verify_dns.pl")
MESSAGE = (
    b"From: News <news@acme.test>\r\nTo: ann@example.org\r\nSubject: keys\r\n"
    b"Message-ID: <k1@acme.test>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
    b"Signed with a key from gateway dkim keygen.\r\n"
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[plugins.dkim]\nkey_dir = "{tmp_path / "keys"}"\n')
    return path


def run(config_file: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["-c", str(config_file), *args])
    out, err = capsys.readouterr()
    return code, out, err


def sign(config_file: Path, raw: bytes) -> bytes:
    """Sign as the gateway does: the DKIM plugin's signer over its configured key_dir."""
    config = parse_config(config_file.read_text())
    signer = Signer(plugin_settings(config, "dkim", Settings))
    return signer.sign(raw, signer.keys_for(raw), time.time()) + raw


def verify_with_dkimpy(server: DnsServer, raw: bytes) -> bool:
    """dkimpy's verifier, its key lookups answered by the same DNS server."""
    resolver = server.resolver()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))


def verify(server: DnsServer, raw: bytes) -> list[list[str]]:
    result = subprocess.run(
        ["perl", str(VERIFIER), server.host, str(server.port)],
        input=raw,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [[*line.split(" ", 4), ""][:5] for line in result.stdout.decode().splitlines()]


@pytest.mark.parametrize(
    ("key_type", "algorithm"), [("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")]
)
def test_keygen_key_signs_and_mail_dkim_verifies_it_through_dns(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    dns_server: Callable[..., DnsServer],
    key_type: str,
    algorithm: str,
) -> None:
    code, printed, err = run(
        config_file,
        capsys,
        "dkim",
        "keygen",
        "acme.test",
        "--selector",
        "s2026",
        "--type",
        key_type,
    )
    assert code == 0, err
    key_file = config_file.parent / "keys" / "acme.test" / "s2026.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert printed.startswith("s2026._domainkey.acme.test. 3600 IN TXT ")
    server = dns_server({"acme.test": [printed.strip()]})
    signed = sign(config_file, MESSAGE)
    (result,) = verify(server, signed)
    if key_type == "ed25519" and result[3] == "invalid":
        # Debian 12's Mail::DKIM (1.20230212) predates its ed25519 support.
        assert "unsupported" in result[4], result
    else:
        assert result[:4] == ["acme.test", "s2026", algorithm, "pass"]
    assert verify_with_dkimpy(server, signed)
    # The same message against a zone without the record: Mail::DKIM cannot verify it.
    empty = dns_server({"acme.test": ["www A 192.0.2.1"]})
    assert verify(empty, signed)[0][3] != "pass"


def test_rotation_new_selector_signs_old_stays_published_until_retired(
    config_file: Path, capsys: pytest.CaptureFixture[str], dns_server: Callable[..., DnsServer]
) -> None:
    _, old_record, _ = run(
        config_file, capsys, "dkim", "keygen", "acme.test", "--selector", "old", "--bits", "1024"
    )
    code, new_record, err = run(
        config_file, capsys, "dkim", "keygen", "acme.test", "--selector", "new", "--bits", "1024"
    )
    assert code == 0
    assert "old no longer signs" in err
    key_dir = config_file.parent / "keys"
    assert [(k.selector, k.state) for k in list_keys(key_dir, "acme.test")] == [
        ("new", "signing"),
        ("old", "published"),
    ]
    server = dns_server({"acme.test": [old_record.strip(), new_record.strip()]})
    signed = sign(config_file, MESSAGE)
    assert [r[1:4] for r in verify(server, signed)] == [["new", "rsa-sha256", "pass"]]
    # Both records are still to be published (the old one until retired).
    code, records, _ = run(config_file, capsys, "dns", "records", "acme.test")
    assert "old._domainkey.acme.test." in records and "new._domainkey.acme.test." in records

    code, _, err = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "new")
    assert code == 2
    assert "new still signs mail for acme.test" in err
    code, out, _ = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "old")
    assert "remove old._domainkey.acme.test TXT" in out
    assert code == 0
    code, listing, _ = run(config_file, capsys, "dkim", "list", "acme.test")
    assert "old              retired" in listing
    code, records, _ = run(config_file, capsys, "dns", "records", "acme.test")
    assert "old._domainkey" not in records


def test_keygen_refuses_bad_input_and_reused_selectors(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [
        (["not a domain", "--selector", "s1"], "not a domain: 'not a domain'"),
        (["acme.test", "--selector", "bad_selector!"], "not a valid selector: 'bad_selector!'"),
        (["acme.test", "--selector", "s1", "--bits", "512"], "--bits 512: RSA keys are 1024"),
    ]
    for args, message in bad:
        code, out, err = run(config_file, capsys, "dkim", "keygen", *args)
        assert code == 2 and message in err and out == ""
    assert (
        run(
            config_file,
            capsys,
            "dkim",
            "keygen",
            "acme.test",
            "--selector",
            "s1",
            "--type",
            "ed25519",
        )[0]
        == 0
    )
    code, _, err = run(
        config_file, capsys, "dkim", "keygen", "acme.test", "--selector", "s1", "--type", "ed25519"
    )
    assert code == 2
    assert "selector s1 already exists for acme.test" in err
    code, _, err = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "nope")
    assert code == 2 and "no DKIM key nope for acme.test" in err


def test_configured_selectors_decide_what_signs_and_what_dns_check_requires(
    config_file: Path, capsys: pytest.CaptureFixture[str], dns_server: Callable[..., DnsServer]
) -> None:
    for selector in ("r1", "r2"):
        code, _, err = run(
            config_file, capsys, "dkim", "keygen", "acme.test", "--selector", selector,
            "--bits", "1024", "--keep-signing",
        )  # fmt: skip
        assert code == 0, err
    key_dir = config_file.parent / "keys"
    config_file.write_text(f'[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["r2"]\n')
    config = parse_config(config_file.read_text())
    # r1 is on disk in the signing place, but the configuration does not sign with it.
    assert [(k.selector, k.state) for k in configured_keys(config, "acme.test")] == [
        ("r1", "published"),
        ("r2", "signing"),
    ]
    required = {
        r.selector: r.required
        for r in expected_records(config, "acme.test", configured_keys(config, "acme.test"))
        if r.purpose == "dkim"
    }
    assert required == {"r1": False, "r2": True}

    # A configured selector without a key is a start-up error, not unsigned mail.
    config_file.write_text(f'[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["r3"]\n')
    with pytest.raises(ConfigError, match=r"plugins\.dkim\.selectors: no key for r3"):
        sign(config_file, MESSAGE)
    (key_dir / "other.test").mkdir()
    (key_dir / "acme.test" / "r1.pem").rename(key_dir / "other.test" / "r1.pem")
    config_file.write_text(f'[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["r1"]\n')
    with pytest.raises(ConfigError, match=r"acme\.test has signing keys but none of r1"):
        sign(config_file, MESSAGE)


def test_a_key_still_configured_or_recently_used_is_not_retired(
    config_file: Path, capsys: pytest.CaptureFixture[str], dns_server: Callable[..., DnsServer]
) -> None:
    run(config_file, capsys, "dkim", "keygen", "acme.test", "--selector", "old", "--bits", "1024")
    key_dir = config_file.parent / "keys"
    sign(config_file, MESSAGE)  # a running gateway loads "old" and marks it in use
    code, _, err = run(
        config_file, capsys, "dkim", "keygen", "acme.test", "--selector", "new", "--bits", "1024"
    )
    assert code == 0, err
    code, _, err = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "old")
    assert code == 2
    assert "old of acme.test signed mail" in err and "SIGHUP" in err
    assert [k.state for k in list_keys(key_dir, "acme.test") if k.selector == "old"] == [
        "published"
    ]

    # Still named in [plugins.dkim] selectors: refused whatever its age.
    mark = key_dir / "acme.test" / ".in-use" / "old"
    eight_days_ago = time.time() - 8 * 86400
    os.utime(mark, (eight_days_ago, eight_days_ago))
    config_file.write_text(f'[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["new", "old"]\n')
    code, _, err = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "old")
    assert code == 2 and "still in [plugins.dkim] selectors" in err

    # Out of the configuration and unused for longer than the grace period: retired.
    config_file.write_text(f'[plugins.dkim]\nkey_dir = "{key_dir}"\nselectors = ["new"]\n')
    code, out, err = run(config_file, capsys, "dkim", "retire", "acme.test", "--selector", "old")
    assert code == 0, err
    assert "remove old._domainkey.acme.test TXT" in out
