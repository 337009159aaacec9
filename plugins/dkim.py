"""DKIM signing (RFC 6376; ed25519 per RFC 8463) of every outgoing message, after all transforms.

Semantics are dkimpy's: its message parser, canonicalization, header selection, folding and
signature layout are reused as they are. Only the public-key operation is done differently —
with ``cryptography`` (OpenSSL) on keys loaded once at start-up, instead of dkimpy's
pure-Python RSA (about 140 signatures/s on one core against thousands with OpenSSL).

Keys live in ``<key_dir>/<domain>/<selector>.pem`` (PKCS#8 or PKCS#1 PEM, RSA or ed25519; the
type is read from the key). ``<selector>.rsa.pem`` and ``<selector>.ed25519.pem`` are accepted
too, the suffix then has to match the key. A message is signed for the domain of its ``From``
address, or for the nearest parent domain that has keys (``news.example.com`` → ``example.com``,
which still aligns for DMARC's relaxed mode), with every configured selector that domain has a
key for: an RSA and an ed25519 selector side by side give dual signatures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import dkim
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import (
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
    Relaxed,
    correct_empty_body,
    strip_trailing_lines,
)

from gateway.config import ConfigError, plugin_settings
from gateway.dkim_keys import in_use_mark
from gateway.headers import from_domain
from gateway.message import Delivery, Message
from gateway.plugin_manager import hookimpl

NAME = "dkim"
DEFAULT_ENABLED = False
"""Off unless ``[plugins.dkim]`` exists: there is nothing to sign with before keys are made."""

log = logging.getLogger("gateway.plugins.dkim")

HEADER_NAME = b"DKIM-Signature"
SIGN_HEADERS = [*(h.decode() for h in dkim.DKIM.SHOULD), "list-unsubscribe-post"]
"""RFC 6376's recommended set, as dkimpy signs by default, plus List-Unsubscribe-Post, which
RFC 8058 requires to be signed along with List-Unsubscribe."""
_FORBIDDEN = {h.decode() for h in dkim.DKIM.SHOULD_NOT}
_MIN_RSA_BITS = 1024
MARK_INTERVAL = 300.0
"""Seconds between refreshes of the keys' in-use marks while signing."""

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    key_dir: str = "dns/keys"
    """Where ``<domain>/<selector>.pem`` keys are; relative to the working directory."""
    selectors: list[str] = msgspec.field(default_factory=list)
    """Selectors that sign, in order (e.g. ``["rsa2025", "ed2025"]`` for dual signing); a
    domain signs with those it has keys for. Empty: every key of the domain signs. Naming
    them lets a retired selector's key stay on disk (and in DNS) without signing."""
    canonicalization: str = "relaxed/relaxed"
    """``c=``: header/body, each ``relaxed`` or ``simple``."""
    headers: list[str] = msgspec.field(default_factory=lambda: list(SIGN_HEADERS))
    """Header fields signed when present (every instance)."""
    oversign: list[str] = msgspec.field(default_factory=lambda: ["from"])
    """Header fields signed once more than they occur, so none can be added in transit."""


class SigningKey(msgspec.Struct, frozen=True):
    domain: str
    selector: str
    key: Any
    """An RSA or ed25519 private key from ``cryptography``."""

    @property
    def algorithm(self) -> bytes:
        return (
            b"ed25519-sha256"
            if isinstance(self.key, ed25519.Ed25519PrivateKey)
            else (b"rsa-sha256")
        )


def dns_txt_record(key: Any) -> str:
    """The TXT record to publish at ``<selector>._domainkey.<domain>`` for a private key."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def load_keys(key_dir: Path, selectors: list[str]) -> dict[str, list[SigningKey]]:
    """Domain → its signing keys in ``selectors`` order (or file-name order when empty)."""
    found: dict[str, list[SigningKey]] = {}
    for domain_dir in sorted(p for p in key_dir.iterdir() if p.is_dir()):
        domain = domain_dir.name.lower().rstrip(".")
        keys = {}
        for path in sorted(domain_dir.glob("*.pem")):
            selector, key = _read_key(path)
            if selector in keys:
                raise ConfigError(
                    f"plugins.{NAME}.key_dir: two keys for {selector} in {domain_dir}"
                )
            keys[selector] = SigningKey(domain, selector, key)
        chosen = [keys[s] for s in selectors if s in keys] if selectors else list(keys.values())
        if chosen:
            found[domain] = chosen
    return found


def _check_selectors(
    key_dir: Path, selectors: list[str], keys: dict[str, list[SigningKey]]
) -> None:
    """A configured selector no key has, or a domain with keys none of which is configured,
    would send unsigned mail while ``dns check`` looks fine: refuse to start instead."""
    have = {k.selector for domain_keys in keys.values() for k in domain_keys}
    missing = [s for s in selectors if s not in have]
    if missing:
        raise ConfigError(
            f"plugins.{NAME}.selectors: no key for {', '.join(missing)} in {key_dir} "
            "(make one with `gateway dkim keygen DOMAIN --selector NAME`, or remove it)"
        )
    for domain_dir in sorted(p for p in key_dir.iterdir() if p.is_dir()):
        domain = domain_dir.name.lower().rstrip(".")
        if any(domain_dir.glob("*.pem")) and domain not in keys:
            raise ConfigError(
                f"plugins.{NAME}.selectors: {domain} has signing keys but none of "
                f"{', '.join(selectors)}: its mail would go out unsigned"
            )


def _read_key(path: Path) -> tuple[str, PrivateKey]:
    name = path.name.removesuffix(".pem")
    selector, dot, kind = name.rpartition(".")
    if not dot or kind not in ("rsa", "ed25519"):
        selector, kind = name, ""
    where = f"plugins.{NAME}.key_dir: {path}"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: cannot load the private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if kind == "ed25519" or key.key_size < _MIN_RSA_BITS:
            raise ConfigError(f"{where}: expected an ed25519 key or RSA of at least 1024 bits")
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        if kind == "rsa":
            raise ConfigError(f"{where}: the file name says rsa but the key is ed25519")
    else:
        raise ConfigError(f"{where}: DKIM keys are RSA or ed25519, not {type(key).__name__}")
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", selector):
        raise ConfigError(f"{where}: {selector!r} is not a valid selector")
    return selector, key


class Signer:
    """Everything loaded once: keys by domain, the canonicalization and the header policy."""

    def __init__(self, settings: Settings) -> None:
        try:
            self.policy = CanonicalizationPolicy.from_c_value(settings.canonicalization.encode())
        except InvalidCanonicalizationPolicyError:
            raise ConfigError(
                f"plugins.{NAME}.canonicalization: give header/body, each relaxed or simple"
            ) from None
        self.c_value = self.policy.to_c_value()
        names = [h.lower() for h in (*settings.headers, *settings.oversign)]
        if "from" not in names:
            raise ConfigError(f"plugins.{NAME}.headers: From must be signed (RFC 6376 5.4)")
        bad = sorted(set(names) & _FORBIDDEN)
        if bad:
            raise ConfigError(f"plugins.{NAME}.headers: must not sign {', '.join(bad)}")
        self.sign_headers = {h.lower().encode() for h in settings.headers} | {b"from"}
        self.oversign = [h.lower().encode() for h in settings.oversign]
        key_dir = Path(settings.key_dir)
        if not key_dir.is_dir():
            raise ConfigError(f"plugins.{NAME}.key_dir: {str(key_dir)!r} is not a directory")
        self.key_dir = key_dir
        self.keys = load_keys(key_dir, settings.selectors)
        self._fixed: dict[SigningKey, bytes] = {}
        if settings.selectors:
            _check_selectors(key_dir, settings.selectors, self.keys)
        if not self.keys:
            log.warning("no DKIM keys in %s: nothing will be signed", key_dir)
        self.marked_at = 0.0
        self.mark_in_use(time.time())

    def mark_in_use(self, now: float) -> None:
        """Refresh each loaded key's in-use mark (``gateway dkim retire`` reads it). Blocking
        file I/O: called at load and then from a thread."""
        for keys in self.keys.values():
            for key in keys:
                mark = in_use_mark(self.key_dir, key.domain, key.selector)
                try:
                    mark.parent.mkdir(mode=0o700, exist_ok=True)
                    mark.touch()
                    os.utime(mark, (now, now))
                except OSError as e:  # a read-only key dir must not stop signing
                    log.warning("cannot mark DKIM key %s as in use: %s", mark, e)
        self.marked_at = now

    def keys_for(self, raw: bytes) -> list[SigningKey]:
        domain = from_domain(raw)
        while domain:
            keys = self.keys.get(domain)
            if keys is not None:
                return keys
            domain = domain.partition(".")[2] if domain.count(".") > 1 else ""
        return []

    def sign(self, raw: bytes, keys: list[SigningKey], now: float) -> bytes:
        """``DKIM-Signature`` header lines (CRLF-terminated) for ``raw``, one per key."""
        headers, body = split_message(raw)
        canonical_body = (
            relaxed_body(body)
            if self.policy.body_algorithm is Relaxed
            else self.policy.canonicalize_body(body)
        )
        body_hash = base64.b64encode(hashlib.sha256(canonical_body).digest())
        signed = [h for h in headers if h[0].lower() in self.sign_headers]
        include = [name.lower() for name, _ in signed] + self.oversign
        if self.policy.header_algorithm is Relaxed:
            canonical = [(name.lower().rstrip(), relaxed_header_value(v)) for name, v in signed]
        else:
            canonical = self.policy.canonicalize_headers(signed)  # only what the hash covers
        timestamp = str(int(now)).encode()
        return b"".join(
            self._signature(canonical, include, body_hash, timestamp, key) for key in keys
        )

    def _signature(
        self,
        canonical: list[tuple[bytes, bytes]],
        include: list[bytes],
        body_hash: bytes,
        timestamp: bytes,
        key: SigningKey,
    ) -> bytes:
        # The same steps and layout as dkimpy's DomainSigner.gen_header: v, a, c, d, s, t, h,
        # bh, b; the first five are the same for every message signed with this key.
        head = self._fixed_fields(key) + b"; t=%s; h=%s; bh=%s; b=" % (
            timestamp,
            b" : ".join(include),
            body_hash,
        )
        # A placeholder b= forces b= onto its own line, so refolding after adding it moves
        # nothing else.
        value = dkim.fold(head + _PLACEHOLDER, namelen=len(HEADER_NAME))
        digest = self._header_hash(canonical, include, _without_b_value(value))
        if isinstance(key.key, ed25519.Ed25519PrivateKey):
            signature = key.key.sign(digest)  # RFC 8463: ed25519 over the SHA-256 hash
        else:
            signature = key.key.sign(digest, _PKCS1, _PREHASHED_SHA256)
        return HEADER_NAME + b": " + _with_b_value(value, head, base64.b64encode(signature))

    def _fixed_fields(self, key: SigningKey) -> bytes:
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = b"v=1; a=%s; c=%s; d=%s; s=%s" % (
                key.algorithm,
                self.c_value,
                key.domain.encode(),
                key.selector.encode(),
            )
        return fixed

    def _header_hash(
        self, canonical: list[tuple[bytes, bytes]], include: list[bytes], value: bytes
    ) -> bytes:
        """SHA-256 over the selected header fields and the signature's own field with an
        empty b= (dkimpy's ``hash_headers``), fed to the hash in one piece."""
        if self.policy.header_algorithm is not Relaxed:
            hasher = hashlib.sha256()
            dkim.hash_headers(
                hasher, self.policy, canonical, include, (HEADER_NAME, b" " + value), {}
            )
            return hasher.digest()
        selected = _select_lowercase(canonical, include)
        own = relaxed_header_value(b" " + value).rstrip()
        parts = [b"%s:%s" % pair for pair in selected]
        parts.append(b"dkim-signature:" + own)
        return hashlib.sha256(b"".join(parts)).digest()


_PLACEHOLDER = b"0" * 60
_B_LINE = b"\r\n b=" + _PLACEHOLDER
_FOLD_AT = 71
"""dkimpy's ``fold``: at most this many octets on every line after the first."""


def _with_b_value(folded: bytes, head: bytes, b_value: bytes) -> bytes:
    """``dkim.fold(head + b_value + CRLF)`` given ``folded``, the placeholder's fold: when
    the placeholder's b= began a line and ``b_value`` is no shorter (every real signature),
    everything before it folds the same, and dkimpy cuts
    the space-free b= line every ``_FOLD_AT`` octets, its CRLF counted (``fold``'s loop)."""
    if len(b_value) < len(_PLACEHOLDER) or not folded.endswith(_B_LINE):
        return dkim.fold(head + b_value + b"\r\n", namelen=len(HEADER_NAME))  # type: ignore[no-any-return]
    rest = b"b=" + b_value + b"\r\n"
    lines = []
    while len(rest) > _FOLD_AT:
        lines.append(rest[:_FOLD_AT])
        rest = rest[_FOLD_AT:]
    lines.append(rest)
    return folded[: -len(_PLACEHOLDER) - 2] + b"\r\n ".join(lines)


_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())


def _without_b_value(value: bytes) -> bytes:
    """The signature field with b= emptied, as dkimpy's ``RE_BTAG`` substitution leaves it.
    Our b= is the last tag and its placeholder holds only zeros and folding, so cutting after
    its ``b=`` is the same, unless another ``b=`` occurs (then the regular expression)."""
    if value.count(b"b=") != 1:
        return dkim.RE_BTAG.sub(b"\\1", value)  # type: ignore[no-any-return]
    return value[: value.rfind(b"b=") + 2]


def _select_lowercase(
    headers: list[tuple[bytes, bytes]], include: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """dkimpy's ``select_headers`` for header names already in lower case (relaxed): for
    each name, the next instance from the bottom up."""
    chosen = []
    last: dict[bytes, int] = {}
    for name in include:
        i = last.get(name, len(headers))
        while i > 0:
            i -= 1
            if headers[i][0] == name:
                chosen.append(headers[i])
                break
        last[name] = i
    return chosen


def split_message(raw: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's ``rfc822_parse`` result, without splitting and re-joining every body line
    when the message already has CRLF line ends (as everything from ingress does)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0 or raw.startswith(b"\r\n") or not _crlf_only(raw):
        return dkim.rfc822_parse(raw)  # type: ignore[no-any-return]
    return _parse_header_lines(raw[:end].split(b"\r\n")), raw[end + 4 :]


def _crlf_only(raw: bytes) -> bool:
    """No LF without a CR before it (a search led by the LF: ~2 µs over 5 KB, where
    counting the two-byte CRLF takes 8)."""
    return _BARE_LF.search(raw) is None


_BARE_LF = re.compile(rb"\n(?<!\r\n)")


_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def _parse_header_lines(lines: list[bytes]) -> list[list[bytes]]:
    """dkimpy's ``rfc822_parse`` header loop, on lines known to hold no line end."""
    headers: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b"\t", b" "):
            headers[-1][1] += line + b"\r\n"
            continue
        match = _FIELD_NAME.match(line)
        if match is not None:
            headers.append([match.group(1), line[match.end() :] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return headers


_WSP_RUN = re.compile(rb"[\t ]+")


def relaxed_header_value(value: bytes) -> bytes:
    """RFC 6376 3.4.2 for one field value, exactly as dkimpy's ``Relaxed``: unfold, compress
    runs of WSP to one space, strip, end with CRLF."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"  " in value or b"\t" in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip() + b"\r\n"


_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_TO_COMPRESS = re.compile(rb"[\t ]{2,}|\t")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4, exactly as dkimpy computes it, but substituting only where something
    changes: dkimpy rewrites every single space, a thousand substitutions per 5 KB of HTML."""
    if b" \r\n" in body or b"\t" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"  " in body or b"\t" in body:
        body = _WSP_TO_COMPRESS.sub(b" ", body)
    return correct_empty_body(strip_trailing_lines(body))  # type: ignore[no-any-return]


@hookimpl
def gateway_configure(gateway: Any, config: Any) -> None:
    gateway.plugin_state[NAME] = Signer(plugin_settings(config, NAME, Settings))


@hookimpl
async def gateway_reload(gateway: Any) -> None:
    """SIGHUP: re-read the keys on disk (a rotation takes effect); a key set that does not
    load is logged and the running one kept."""
    try:
        signer = await asyncio.to_thread(Signer, plugin_settings(gateway.config, NAME, Settings))
    except ConfigError as e:
        log.error("reload: DKIM keys not reloaded, still signing with the previous ones: %s", e)
        return
    gateway.plugin_state[NAME] = signer
    log.info(
        "reload: DKIM signs with %s",
        ", ".join(f"{k.selector}@{k.domain}" for ks in signer.keys.values() for k in ks) or "none",
    )


@hookimpl
async def gateway_sign(gateway: Any, message: Message, delivery: Delivery) -> bytes | None:
    signer: Signer = gateway.plugin_state[NAME]
    keys = signer.keys_for(message.raw)
    if not keys:
        return None
    now = gateway.clock.now()
    if now - signer.marked_at >= MARK_INTERVAL:
        signer.marked_at = now
        await asyncio.to_thread(signer.mark_in_use, now)
    return signer.sign(message.raw, keys, now)
