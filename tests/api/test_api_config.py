"""Config for the API: [http] and tenant keys/domains are validated with the key path named."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, parse_config
from gateway.tenants import hash_api_key

HASH = hash_api_key("gwk_example")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[tenants.a.api_keys]]\nname = "k"\nkey_hash = "secret"\n',
            "test.toml:3: tenants.a.api_keys[0].key_hash: not a hash made by `gateway api-key`",
        ),
        (
            f'[[tenants.a.api_keys]]\nname = "k"\nkey_hash = "{HASH}"\nscopes = ["root"]\n',
            "tenants.a.api_keys[0].scopes[0]: Invalid enum value 'root'",
        ),
        (
            f'[[tenants.a.api_keys]]\nname = "k"\nkey_hash = "{HASH}"\nscopes = []\n',
            "tenants.a.api_keys[0].scopes: give at least one of send, read, admin",
        ),
        (
            f'[[tenants.a.api_keys]]\nname = "k"\nkey_hash = "{HASH}"\n'
            f'[[tenants.b.api_keys]]\nname = "k"\nkey_hash = "{HASH}"\n',
            "tenants.b.api_keys[0].key_hash: the same key is configured twice",
        ),
        (
            '[tenants.a]\nsending_domains = ["not a domain"]\n',
            "test.toml:2: tenants.a.sending_domains[0]: not a domain",
        ),
        ("[http]\nport = 70000\n", "test.toml:2: http.port: must be between 0 and 65535"),
        ("[http]\nrate_burst = 0\n", "http.rate_burst: must be at least 1"),
        ("[http]\nenable = true\n", "test.toml:2: http.enable: unknown key"),
    ],
)
def test_invalid_api_config_names_the_key(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(toml, source="test.toml")
    assert expected in str(excinfo.value)


def test_http_is_off_unless_enabled() -> None:
    assert parse_config("").http.enabled is False
    config = parse_config(
        f'[http]\nenabled = true\n[[tenants.a.api_keys]]\nname = "k"\nkey_hash = "{HASH}"\n'
    )
    assert config.http.enabled and config.tenants["a"].api_keys[0].scopes == ["send", "read"]
