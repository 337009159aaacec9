"""Configuration: the example loads, every key is documented, errors name the key and line."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

import gateway.config as config_module
from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway.toml.example"


def _uncommented_example(certificates) -> str:
    """The example with its production blocks switched on ("# " removed; "## " is prose)."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("# ") or line == "#":
            line = line[2:]
        lines.append(line)
    text = "\n".join(lines)
    text = text.replace("/etc/gateway/tls/fullchain.pem", str(certificates.cert_file))
    return text.replace("/etc/gateway/tls/privkey.pem", str(certificates.key_file))


def test_example_config_loads_as_shipped() -> None:
    config = load_config(EXAMPLE)
    assert config.delivery.providers == ["capture"]
    assert config.smtp.listeners[0].name == "dev"


def test_example_config_loads_with_every_block_switched_on(certificates, monkeypatch) -> None:
    monkeypatch.setenv("RELAY_PASSWORD", "s3cret")
    monkeypatch.setenv("TRACKING_KEY_K1", "k1" * 24)
    monkeypatch.setenv("TRACKING_KEY_K2", "k2" * 24)
    monkeypatch.setenv("CRM_WEBHOOK_SECRET", "whsec_" + "A" * 44)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY"):
        monkeypatch.setenv(name, "test-" + name.lower())
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    webhook_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    monkeypatch.setenv(
        "SENDGRID_WEBHOOK_KEY",
        webhook_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    )
    monkeypatch.setenv("BOUNCE_KEY_B1", "b" * 40)
    for name in ("MAILGUN_WEBHOOK_KEY", "POSTMARK_WEBHOOK_PASSWORD", "POSTMARK_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "test-" + name.lower())
    for name in ("MAILGUN_API_KEY", "POSTMARK_SERVER_TOKEN"):
        monkeypatch.setenv(name, "test-" + name.lower())
    config = parse_config(_uncommented_example(certificates), source="example")
    assert [listener.name for listener in config.smtp.listeners] == [
        "dev",
        "submission",
        "submissions",
    ]
    relay = config.providers["relay"]
    assert relay.password == "s3cret"  # type: ignore[union-attr]
    assert config.tenants["default"].smtp_users[0].username == "billing-app"


def _struct_fields(struct_type: type, seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    names: set[str] = set()
    if struct_type in seen:
        return names
    seen.add(struct_type)
    for field in msgspec.structs.fields(struct_type):
        names.add(field.encode_name)
        for inner in re.findall(r"gateway\.config\.(\w+)", repr(field.type)):
            names |= _struct_fields(getattr(config_module, inner), seen)
    return names


def test_every_config_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    written = set(re.findall(r"^(?:# )?([a-z_0-9]+)\s*=", text, flags=re.M))
    written |= set(re.findall(r"\[\[?(?:# )?([a-z_]+(?:\.[a-z_]+)*)[.\]]", text))
    written = {part for name in written for part in name.split(".")}
    missing = sorted((_struct_fields(Config) | {"type"}) - written)
    assert not missing, f"keys not documented in gateway.toml.example: {missing}"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[smtp]\nmax_recipients = 10\nbogus = 1\n", "test.toml:3: smtp.bogus: unknown key"),
        (
            '[smtp]\nmax_recipients = "ten"\n',
            "test.toml:2: smtp.max_recipients: Expected `int`, got `str`",
        ),
        (
            '[[smtp.listeners]]\nname = "a"\nport = 25\n\n'
            '[[smtp.listeners]]\nname = "b"\nport = "x"\n',
            "test.toml:7: smtp.listeners[1].port: Expected `int`, got `str`",
        ),
        (
            '[providers.relay]\ntype = "smtp"\nhost = "h"\n'
            'password = "${GATEWAY_TEST_UNSET_VAR}"\n',
            "test.toml:4: providers.relay.password: environment variable GATEWAY_TEST_UNSET_VAR "
            "is not set",
        ),
        ('[providers.relay]\ntype = "smtp"\n', "providers.relay.host: required key is missing"),
        ('[providers.relay]\ntype = "carrier-pigeon"\n', "providers.relay.type: Invalid value"),
        (
            '[delivery]\nproviders = ["nowhere"]\n',
            "test.toml:2: delivery.providers[0]: no provider named 'nowhere'",
        ),
        ('[delivery]\nmax_lifetime = "forever"\n', "delivery.max_lifetime: not a duration"),
        (
            '[[smtp.listeners]]\nname = "pub"\naddress = "0.0.0.0"\nport = 25\ntls = "none"\n'
            "insecure_auth = true\n",
            "test.toml:6: smtp.listeners[0].insecure_auth: AUTH without TLS is only allowed on a "
            "loopback address",
        ),
        (
            '[[smtp.listeners]]\nname = "sub"\nport = 587\n',
            "smtp.listeners[0].tls: tls = 'starttls' needs smtp.tls.cert_file",
        ),
        (
            '[tenants.acme]\nsmtp_networks = ["10.0.0.0/33"]\n',
            "test.toml:2: tenants.acme.smtp_networks[0]: not an IP network",
        ),
        (
            '[[tenants.acme.smtp_users]]\nusername = "app"\npassword_hash = "hunter2"\n',
            "tenants.acme.smtp_users[0].password_hash: not a hash made by `gateway hash-password`",
        ),
        ("[smtp\n", "test.toml: invalid TOML"),
    ],
)
def test_invalid_config_names_the_key(toml: str, expected: str, monkeypatch) -> None:
    monkeypatch.delenv("GATEWAY_TEST_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError) as excinfo:
        parse_config(toml, source="test.toml")
    assert expected in str(excinfo.value)


def test_environment_variables_are_substituted(monkeypatch) -> None:
    monkeypatch.setenv("GW_RELAY_HOST", "relay.internal")
    config = parse_config('[providers.relay]\ntype = "smtp"\nhost = "${GW_RELAY_HOST}"\n')
    assert config.providers["relay"].host == "relay.internal"  # type: ignore[union-attr]


def test_defaults_are_the_embedded_setup() -> None:
    config = load_config(None)
    assert config.store.backend == "sqlite"
    assert config.delivery.providers == ["capture"]
    assert config.smtp.listeners[0].address == "127.0.0.1"
    assert config.delivery.max_lifetime_seconds == 3 * 86400


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("5m", 300), ("1h20m", 4800), ("3d", 259200), ("1w", 604800)]
)
def test_durations_round_trip(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-5m", "m5"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_spf_include_takes_dns_names_with_underscores() -> None:
    config = parse_config(
        '[domains."shop.example"]\nspf_include = ["_spf.google.com", "spf.example.net"]\n',
        source="test.toml",
    )
    assert config.domains["shop.example"].spf_include[0] == "_spf.google.com"
    with pytest.raises(ConfigError, match=r"spf_include\[0\]: not a domain"):
        parse_config('[domains."shop.example"]\nspf_include = ["bad..name"]\n', source="t.toml")
