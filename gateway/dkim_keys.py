"""DKIM key management: generate, list, rotate and retire keys in the signing plugin's key
directory (``[plugins.dkim] key_dir``, default ``dns/keys``).

A key's place on disk is its state, so the signer (plugins/dkim.py, which loads
``<key_dir>/<domain>/*.pem``) needs no other bookkeeping:

- ``<domain>/<selector>.pem``: **signing** (and must be published);
- ``<domain>/published/<selector>.pem``: **published** only: no longer signs, but its TXT record
  stays in DNS so mail already sent still verifies;
- ``<domain>/retired/<selector>.pem``: **retired**: the record may be removed from DNS.

Rotation: ``keygen`` with a new selector moves the domain's signing keys of the same type to
``published/`` (an RSA and an ed25519 key keep dual-signing side by side); ``retire`` ends a
published key. The gateway loads keys at start-up and on SIGHUP.

The signer marks each key it signs with: ``<domain>/.in-use/<selector>``, whose modification
time is when it last loaded or used the key (refreshed at most every few minutes). ``retire``
refuses a key that ``[plugins.dkim] selectors`` still names or that was in use within the
grace period, so a record is never removed while mail signed with it may still be checked.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway import durable
from gateway.config import Config

KeyState = Literal["signing", "published", "retired"]
KeyType = Literal["rsa", "ed25519"]

SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_STATE_DIRS: dict[KeyState, str] = {"signing": "", "published": "published", "retired": "retired"}


DEFAULT_KEY_DIR = "dns/keys"
"""``[plugins.dkim] key_dir`` when not set (plugins/dkim.py has the same default)."""


def configured_key_dir(config: Config) -> Path:
    """Where the DKIM signing plugin reads its keys from."""
    return Path(str(config.plugins.get("dkim", {}).get("key_dir", DEFAULT_KEY_DIR)))


def configured_selectors(config: Config) -> list[str]:
    """``[plugins.dkim] selectors``: when set, only keys with these selectors sign."""
    return [str(s) for s in config.plugins.get("dkim", {}).get("selectors", [])]


def configured_keys(config: Config, domain: str | None = None) -> list[DkimKey]:
    """The keys as the running configuration uses them: a key in the signing place whose
    selector ``[plugins.dkim] selectors`` leaves out does not sign, so it counts as
    ``published`` — ``dns check`` then checks exactly the keys that sign."""
    selectors = configured_selectors(config)
    keys = list_keys(configured_key_dir(config), domain)
    if not selectors:
        return keys
    return [
        msgspec.structs.replace(k, state="published")
        if k.state == "signing" and k.selector not in selectors
        else k
        for k in keys
    ]


class DkimKeyError(Exception):
    """A key operation cannot be done; the message says why and what to do."""


class DkimKey(msgspec.Struct, kw_only=True, frozen=True):
    domain: str
    selector: str
    state: KeyState
    type: KeyType
    bits: int
    path: str
    record_name: str
    """``<selector>._domainkey.<domain>``"""
    record: str
    """The TXT value to publish there."""

    def bind(self) -> str:
        """The record as one BIND zone-file line (long values split into 255-byte strings)."""
        return f"{self.record_name}. 3600 IN TXT {quote_txt(self.record)}"


def dns_txt_record(key: Any) -> str:
    """The TXT value for ``<selector>._domainkey.<domain>`` (RFC 6376 3.6.1; RFC 8463)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def quote_txt(value: str) -> str:
    """A TXT value as zone-file character strings of at most 255 bytes each."""
    data = value.encode()
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    strings = ['"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks]
    return "( " + " ".join(strings) + " )" if len(strings) > 1 else strings[0]


def _describe(domain: str, selector: str, state: KeyState, path: Path, key: Any) -> DkimKey:
    is_ed = isinstance(key, ed25519.Ed25519PrivateKey)
    return DkimKey(
        domain=domain,
        selector=selector,
        state=state,
        type="ed25519" if is_ed else "rsa",
        bits=256 if is_ed else key.key_size,
        path=str(path),
        record_name=f"{selector}._domainkey.{domain}",
        record=dns_txt_record(key),
    )


def _load(path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise DkimKeyError(f"{path}: cannot load the private key: {e}") from None


def _selector_of(path: Path) -> str:
    name = path.name.removesuffix(".pem")
    base, dot, kind = name.rpartition(".")
    return base if dot and kind in ("rsa", "ed25519") else name


def list_keys(key_dir: Path, domain: str | None = None) -> list[DkimKey]:
    """Every key (of one domain, or all), signing first, then published, then retired."""
    if not key_dir.is_dir():
        return []
    domains = (
        [domain.lower()] if domain else sorted(p.name for p in key_dir.iterdir() if p.is_dir())
    )
    found = []
    for name in domains:
        for state, sub in _STATE_DIRS.items():
            folder = key_dir / name / sub
            if folder.is_dir():
                for path in sorted(folder.glob("*.pem")):
                    found.append(_describe(name, _selector_of(path), state, path, _load(path)))
    return found


def _check_names(domain: str, selector: str) -> tuple[str, str]:
    domain = domain.lower().rstrip(".")
    if not DOMAIN.match(domain):
        raise DkimKeyError(f"not a domain: {domain!r}")
    if not SELECTOR.match(selector):
        raise DkimKeyError(
            f"not a valid selector: {selector!r} (letters, digits and '-', e.g. s2026a)"
        )
    return domain, selector


def keygen(
    key_dir: Path,
    domain: str,
    selector: str,
    key_type: KeyType = "rsa",
    bits: int = 2048,
    *,
    keep_signing: bool = False,
) -> tuple[DkimKey, list[DkimKey]]:
    """Make a key that signs from now on; returns it and the keys it took over from (moved to
    ``published/``, unless ``keep_signing``)."""
    domain, selector = _check_names(domain, selector)
    if key_type == "rsa" and not 1024 <= bits <= 8192:
        raise DkimKeyError(f"--bits {bits}: RSA keys are 1024 to 8192 bits (2048 recommended)")
    existing = list_keys(key_dir, domain)
    for key in existing:
        if key.selector == selector:
            raise DkimKeyError(
                f"selector {selector} already exists for {domain} ({key.state}, {key.path}); "
                "choose a new one: a selector's record must never change meaning"
            )
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=bits)
        if key_type == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    folder = key_dir / domain
    durable.make_directories(folder, mode=0o700)
    path = folder / f"{selector}.pem"
    durable.write_file(path, pem, mode=0o600, exclusive=True)
    superseded = []
    if not keep_signing:
        for key in existing:
            if key.state == "signing" and key.type == key_type:
                superseded.append(_move(key, "published"))
    return _describe(domain, selector, "signing", path, private), superseded


def _move(key: DkimKey, state: KeyState) -> DkimKey:
    source = Path(key.path)
    target_dir = source.parent if key.state == "signing" else source.parent.parent
    if _STATE_DIRS[state]:
        target_dir = target_dir / _STATE_DIRS[state]
    durable.make_directories(target_dir, mode=0o700)
    target = target_dir / source.name
    durable.rename(source, target)
    return msgspec.structs.replace(key, state=state, path=str(target))


IN_USE_DIR = ".in-use"
RETIRE_GRACE = 7 * 86400.0
"""How long after its last use a key may be retired: receivers verify on arrival, but mail
can sit in queues (ours and theirs) for days."""


def in_use_mark(key_dir: Path, domain: str, selector: str) -> Path:
    return key_dir / domain.lower() / IN_USE_DIR / selector


def last_used(key_dir: Path, domain: str, selector: str) -> float | None:
    """When a signer last loaded or used the key (``None``: never seen in use)."""
    try:
        return in_use_mark(key_dir, domain, selector).stat().st_mtime
    except FileNotFoundError:
        return None


def retire(
    key_dir: Path,
    domain: str,
    selector: str,
    *,
    now: float,
    configured: Sequence[str] = (),
    grace: float = RETIRE_GRACE,
) -> DkimKey:
    """End a published (no longer signing) key: its DNS record may then be removed.
    ``configured`` is ``[plugins.dkim] selectors``."""
    domain, selector = _check_names(domain, selector)
    for key in list_keys(key_dir, domain):
        if key.selector != selector:
            continue
        if key.state != "retired" and selector in configured:
            raise DkimKeyError(
                f"{selector} is still in [plugins.dkim] selectors: remove it there and reload "
                "the gateway (SIGHUP) first"
            )
        used = last_used(key_dir, domain, selector)
        if key.state == "published" and used is not None and now - used < grace:
            raise DkimKeyError(
                f"{selector} of {domain} signed mail {_ago(now - used)} ago: a running gateway "
                f"may still sign with it (reload it with SIGHUP) and receivers may still check "
                f"it; retire it once {_ago(grace)} have passed since its last use"
            )
        if key.state == "signing":
            raise DkimKeyError(
                f"{selector} still signs mail for {domain}: generate its successor with "
                f"`gateway dkim keygen {domain} --selector NEW` first"
            )
        if key.state == "retired":
            raise DkimKeyError(f"{selector} of {domain} is already retired")
        return _move(key, "retired")
    raise DkimKeyError(f"no DKIM key {selector} for {domain} in {key_dir}")


def _ago(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{max(seconds, 0) / 60:.0f} minutes"
