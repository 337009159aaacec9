"""``gateway.toml`` → typed msgspec Structs.

Every error names the key path (``smtp.listeners[1].port``) and, where the key is written in the
file, its line. Strings of the form ``${NAME}`` are replaced by the environment variable ``NAME``
before validation, so secrets stay out of the file; a missing variable is an error, not "".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from gateway.durations import parse_duration


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


# --- sections -------------------------------------------------------------------------------

_STRICT: dict[str, Any] = {"forbid_unknown_fields": True, "kw_only": True}


class GatewaySection(msgspec.Struct, **_STRICT):
    hostname: str = "localhost"
    """Name used in the SMTP banner, Received headers, Message-IDs and DSNs."""
    data_dir: str = "var"
    """Where the spool and the capture outbox live (relative to the working directory)."""
    workers: int = 1
    """Worker processes sharing the listeners (SO_REUSEPORT); each owns one spool shard."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    plugins: list[str] = msgspec.field(default_factory=list)
    """Extra plugin modules to load by import path, after the built-ins and entry points."""


class StoreSection(msgspec.Struct, **_STRICT):
    backend: Literal["sqlite", "redis"] = "sqlite"
    """``sqlite`` (embedded, one node) or ``redis`` (several nodes share one queue)."""
    path: str = ""
    """Spool directory; default ``<data_dir>/spool``."""
    url: str = "redis://127.0.0.1:6379/0"
    """Redis only: ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
    ``redis+cluster://`` (see docs/redis.md)."""
    prefix: str = "gateway"
    """Redis only: namespace of the gateway's keys; nodes sharing a queue use the same one."""
    lease: str = "30s"
    """Redis only: how long a node holds a delivery it claimed without renewing it; the
    deliveries of a node that died are taken over by another one after this long."""

    @property
    def lease_seconds(self) -> float:
        return parse_duration(self.lease)


class ListenerSection(msgspec.Struct, **_STRICT):
    name: str
    port: int
    address: str = "127.0.0.1"
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    """``starttls`` (submission, 587), ``implicit`` (submissions, 465) or ``none``."""
    insecure_auth: bool = False
    """Allow AUTH without TLS. Only for a listener bound to loopback, for development."""


class SmtpTlsSection(msgspec.Struct, **_STRICT):
    cert_file: str = ""
    key_file: str = ""


def _default_listeners() -> list[ListenerSection]:
    return [ListenerSection(name="dev", port=2525, tls="none", insecure_auth=True)]


class SmtpSection(msgspec.Struct, **_STRICT):
    listeners: list[ListenerSection] = msgspec.field(default_factory=_default_listeners)
    tls: SmtpTlsSection = msgspec.field(default_factory=SmtpTlsSection)
    max_message_size: int = 25 * 1024 * 1024
    """Bytes; advertised as SIZE and enforced during DATA."""
    max_recipients: int = 100
    timeout: float = 300.0
    """Seconds of client silence before the session is dropped."""
    smtputf8: bool = True


class SmtpUserSection(msgspec.Struct, **_STRICT):
    username: str
    password_hash: str
    """Output of ``gateway hash-password``; the password itself is never stored."""


class ApiKeySection(msgspec.Struct, **_STRICT):
    name: str
    """Shown in logs and rate-limit answers; unique within the tenant."""
    key_hash: str
    """Output of ``gateway api-key``; the key itself is never stored."""
    scopes: list[Literal["send", "read", "admin"]] = msgspec.field(
        default_factory=lambda: ["send", "read"]
    )
    """``send`` (POST messages), ``read`` (status, stats, suppressions), ``admin`` (everything)."""
    rate_limit: float = 0.0
    """Requests per second for this key; 0 means ``http.rate_limit``."""


class TenantSection(msgspec.Struct, **_STRICT):
    smtp_users: list[SmtpUserSection] = msgspec.field(default_factory=list)
    smtp_networks: list[str] = msgspec.field(default_factory=list)
    """Client addresses/CIDRs trusted to submit for this tenant without AUTH (legacy apps)."""
    api_keys: list[ApiKeySection] = msgspec.field(default_factory=list)
    sending_domains: list[str] = msgspec.field(default_factory=list)
    """Domains the HTTP API lets this tenant send from (``from`` address); empty means any."""


class HttpSection(msgspec.Struct, **_STRICT):
    """The JSON API (litestar, served by uvicorn in the same event loop as SMTP)."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 8025
    """0 picks a free port (tests)."""
    max_body_size: int = 40 * 1024 * 1024
    """Bytes per request; base64 attachments make JSON about a third larger than the message."""
    rate_limit: float = 50.0
    """Requests per second per API key (token bucket, per worker process); 0 turns it off."""
    rate_burst: int = 100
    """Requests a key may make at once before the rate applies."""
    docs: bool = True
    """Serve the OpenAPI document and an interactive page under ``/docs``."""


class TrackingSection(msgspec.Struct, **_STRICT):
    """Shared by the tracking plugins (click_tracking, open_pixel, list_unsubscribe)."""

    base_url: str = ""
    """Where ``/t/...`` links point, e.g. ``https://t.example.com``: the gateway's HTTP API as
    the internet reaches it. Required when a tracking plugin is on."""
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    """Key id → HMAC secret (at least 32 bytes; use ``${ENV}``). Every key verifies."""
    signing_key: str = ""
    """The key id that signs new links; default: the first of ``keys``."""
    token_lifetime: str = ""
    """How long links keep working (e.g. ``"180d"``); empty means forever."""

    @property
    def token_lifetime_seconds(self) -> float:
        return parse_duration(self.token_lifetime) if self.token_lifetime else 0.0

    @property
    def signing_key_id(self) -> str:
        return self.signing_key or next(iter(self.keys), "")


def _default_tenants() -> dict[str, TenantSection]:
    return {"default": TenantSection(smtp_networks=["127.0.0.1/32", "::1/128"])}


def _default_retry_schedule() -> list[str]:
    return ["5m", "10m", "20m", "40m", "1h20m", "2h40m", "4h"]


class DeliverySection(msgspec.Struct, **_STRICT):
    providers: list[str] = msgspec.field(default_factory=lambda: ["capture"])
    """Provider names in failover order: a temporary failure moves on to the next one."""
    concurrency: int = 100
    batch_size: int = 200
    retry_schedule: list[str] = msgspec.field(default_factory=_default_retry_schedule)
    """Waits between attempts; the last one repeats until ``max_lifetime``."""
    max_lifetime: str = "3d"
    dsn: bool = False
    """Send an RFC 3464 bounce to the envelope sender of SMTP-submitted mail."""

    @property
    def retry_delays(self) -> list[float]:
        return [parse_duration(d) for d in self.retry_schedule]

    @property
    def max_lifetime_seconds(self) -> float:
        return parse_duration(self.max_lifetime)


class CaptureProviderSection(msgspec.Struct, tag="capture", tag_field="type", **_STRICT):
    """Development default: writes each outgoing message to ``<data_dir>/outbox``."""

    directory: str = ""


class SmtpProviderSection(msgspec.Struct, tag="smtp", tag_field="type", **_STRICT):
    """Relay to a smarthost with aiosmtplib."""

    host: str
    port: int = 587
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: str = ""
    timeout: float = 30.0
    pool_size: int = 10
    """Connections kept open and reused across messages."""
    verify_tls: bool = True
    ca_file: str = ""


class SesProviderSection(msgspec.Struct, tag="ses", tag_field="type", **_STRICT):
    """Amazon SES API v2 ``SendEmail`` with raw MIME, signed with SigV4 (``providers/ses.py``)."""

    region: str
    """AWS region of the SES endpoint, e.g. ``eu-west-1``."""
    access_key_id: str
    secret_access_key: str
    """Use ``${ENV}``; never write the secret into the file."""
    session_token: str = ""
    """For temporary credentials (STS); empty otherwise."""
    endpoint: str = ""
    """Base URL; default ``https://email.<region>.amazonaws.com`` (tests point it at loopback)."""
    configuration_set: str = ""
    """SES configuration set for event publishing (bounces, complaints, opens … via SNS)."""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    """Fixed message tags added to every send (name → value)."""
    timeout: float = 30.0
    """Seconds per HTTP request."""
    max_connections: int = 20
    """HTTP connections kept open to the API (pooled, reused)."""


class SendgridProviderSection(msgspec.Struct, tag="sendgrid", tag_field="type", **_STRICT):
    """SendGrid v3 ``/mail/send`` (``providers/sendgrid.py``)."""

    api_key: str
    """An API key with the ``mail.send`` scope; use ``${ENV}``."""
    base_url: str = "https://api.sendgrid.com"
    ip_pool: str = ""
    """``ip_pool_name`` for every send; empty leaves it to SendGrid."""
    timeout: float = 30.0
    max_connections: int = 20


class MailgunProviderSection(msgspec.Struct, tag="mailgun", tag_field="type", **_STRICT):
    """Mailgun ``/v3/<domain>/messages.mime`` (``providers/mailgun.py``)."""

    api_key: str
    """The domain's sending key or an account API key; use ``${ENV}``."""
    domain: str
    """The Mailgun sending domain, e.g. ``mg.example.com``."""
    region: Literal["us", "eu"] = "us"
    """``us`` → ``https://api.mailgun.net``, ``eu`` → ``https://api.eu.mailgun.net``."""
    base_url: str = ""
    """Overrides ``region`` (tests point it at loopback)."""
    timeout: float = 30.0
    max_connections: int = 20


class PostmarkProviderSection(msgspec.Struct, tag="postmark", tag_field="type", **_STRICT):
    """Postmark ``/email`` (``providers/postmark.py``)."""

    server_token: str
    """The Postmark server's API token; use ``${ENV}``."""
    message_stream: str = "outbound"
    """Message stream to send through (``outbound`` transactional, or a broadcast stream)."""
    base_url: str = "https://api.postmarkapp.com"
    timeout: float = 30.0
    max_connections: int = 20


ProviderSection = (
    CaptureProviderSection
    | SmtpProviderSection
    | SesProviderSection
    | SendgridProviderSection
    | MailgunProviderSection
    | PostmarkProviderSection
)


def _default_providers() -> dict[str, ProviderSection]:
    return {"capture": CaptureProviderSection()}


class DomainSection(msgspec.Struct, **_STRICT):
    """``[domains."example.com"]``: a sending domain's DNS identity, warming and reputation
    settings. Its owner is the tenant listing it in ``sending_domains``."""

    # --- warming and pools (plugins/warming.py) ---
    warming_schedule: str = ""
    """``conservative``, ``moderate``, ``aggressive`` or a name from
    ``[plugins.warming.schedules]``; empty: an established domain without daily caps."""
    warming_start: dt.date | None = None
    """Day 1 of the schedule (a date in ``plugins.warming.timezone``)."""
    pool: str = ""
    """The IP pool this domain's mail leaves from (``[ips]`` with that ``pool``); empty: any."""

    # --- DNS identity (gateway/dnsauth, docs/dns.md) ---
    spf_include: list[str] = msgspec.field(default_factory=list)
    """Domains whose SPF the domain's record includes: the ESPs it sends through (e.g.
    ``amazonses.com``, ``sendgrid.net``)."""
    spf_ip: list[str] = msgspec.field(default_factory=list)
    """Extra addresses or networks (``ip4:``/``ip6:``) to authorize, besides the ``[ips]`` of
    the domain's pool (all ``[ips]`` when the domain has no pool)."""
    return_path: str = ""
    """The bounce (Return-Path / MAIL FROM) domain, e.g. ``bounces.example.com``; empty: the
    domain itself."""
    return_path_mx: str = ""
    """Host that receives bounces for ``return_path`` (published as its MX, with SPF)."""
    return_path_cname: str = ""
    """Or: a provider's bounce host that ``return_path`` is a CNAME of."""
    tracking_host: str = ""
    """Host name in open/click/unsubscribe links, e.g. ``links.example.com``."""
    tracking_cname: str = ""
    """What ``tracking_host`` is a CNAME of (the gateway's public HTTP host)."""
    dmarc_policy: Literal["none", "quarantine", "reject"] = "none"
    """``p=`` of the DMARC record to publish; ``none`` (monitor) is the safe start."""
    dmarc_rua: str = ""
    """Where aggregate DMARC reports go (``mailto:``); default ``mailto:dmarc@<domain>``."""
    mta_sts_mode: Literal["", "testing", "enforce", "none"] = ""
    """MTA-STS for mail *to* the domain: empty publishes nothing; ``testing`` first."""
    mta_sts_mx: list[str] = msgspec.field(default_factory=list)
    """The domain's inbound MX host patterns for the MTA-STS policy (``*.example.net`` ok)."""
    mta_sts_max_age: int = 604800
    """Policy lifetime in seconds (one week; at most 31557600)."""
    mta_sts_cname: str = ""
    """What ``mta-sts.<domain>`` is a CNAME of: the gateway's public HTTPS host, which serves
    ``/.well-known/mta-sts.txt``."""
    tls_rpt_rua: str = ""
    """Where TLS reports (RFC 8460) go; default ``mailto:tls-reports@<domain>``."""


class DnsSection(msgspec.Struct, **_STRICT):
    """``[dns]``: how sending domains' DNS is checked, and what an unverified domain may do."""

    resolvers: list[str] = msgspec.field(default_factory=list)
    """Name servers to ask (``"192.0.2.53"``, ``"[2001:db8::53]:5353"``, ``"127.0.0.1:5353"``);
    empty: the system's (``/etc/resolv.conf``)."""
    timeout: float = 5.0
    """Seconds a whole lookup may take; longer is reported as "could not check", never as
    missing."""
    unverified_sending: Literal["allow", "refuse"] = "allow"
    """Mail whose From domain is not verified (SPF, DKIM and DMARC pass): ``allow`` accepts it
    and logs an INFO line, ``refuse`` answers 550 5.7.1 (SMTP) / 422 (HTTP)."""


class IpSection(msgspec.Struct, **_STRICT):
    """``[ips."198.51.100.7"]``: a dedicated sending IP, and the provider (route) whose mail
    leaves from it — a direct-MX or relay provider bound to that address, or an ESP's
    dedicated-IP pool."""

    provider: str
    pool: str = ""
    """The pool this IP belongs to; domains with ``pool`` set send only through their pool."""
    warming_schedule: str = ""
    """As for a domain: the IP's own daily caps while it warms up."""
    warming_start: dt.date | None = None


class Config(msgspec.Struct, **_STRICT):
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    smtp: SmtpSection = msgspec.field(default_factory=SmtpSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    tracking: TrackingSection = msgspec.field(default_factory=TrackingSection)
    tenants: dict[str, TenantSection] = msgspec.field(default_factory=_default_tenants)
    delivery: DeliverySection = msgspec.field(default_factory=DeliverySection)
    providers: dict[str, ProviderSection] = msgspec.field(default_factory=_default_providers)
    domains: dict[str, DomainSection] = msgspec.field(default_factory=dict)
    dns: DnsSection = msgspec.field(default_factory=DnsSection)
    ips: dict[str, IpSection] = msgspec.field(default_factory=dict)
    plugins: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    """``[plugins.<name>]`` tables, each validated by its own plugin (``plugin_settings``)."""

    def __post_init__(self) -> None:
        # `capture` is always there to fall back to or test with, unless a table redefines it.
        self.providers.setdefault("capture", CaptureProviderSection())

    @property
    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir)

    @property
    def spool_dir(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "spool"


# --- loading --------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read, expand and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        config = Config()
        _check(config, "")
        return config
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    data = _expand_env(data, (), text, source)
    _check_named_tables(data, text, source)
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(_describe_validation_error(str(e), text, source)) from None
    _check(config, text, source)
    return config


_NAMED_TABLES: dict[str, Any] = {
    "tenants": TenantSection,
    "providers": ProviderSection,
    "domains": DomainSection,
    "ips": IpSection,
}


def _check_named_tables(data: dict[str, Any], text: str, source: str) -> None:
    """Validate ``[tenants.<name>]`` / ``[providers.<name>]`` one by one: msgspec's error path
    says ``[...]`` for a dict key, and the operator needs to know which name is wrong."""
    for section, struct_type in _NAMED_TABLES.items():
        tables = data.get(section)
        if not isinstance(tables, dict):
            continue
        for name, value in tables.items():
            try:
                msgspec.convert(value, struct_type)
            except msgspec.ValidationError as e:
                detail, sep, at = str(e).rpartition(" - at `$")
                message = (
                    f'{detail} - at `$.{section}["{name}"]{at}'
                    if sep
                    else (f'{e} - at `$.{section}["{name}"]`')
                )
                raise ConfigError(_describe_validation_error(message, text, source)) from None


def _expand_env(value: Any, path: tuple[str | int, ...], text: str, source: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), text, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), text, source) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def substitute(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(
                    _where(path, text, source)
                    + f": environment variable {name} is not set (referenced as ${{{name}}})"
                )
            return os.environ[name]

        return _ENV_REF.sub(substitute, value)
    return value


def _describe_validation_error(message: str, text: str, source: str) -> str:
    """Turn msgspec's ``... - at `$.a.b[0]``` into ``source:line: a.b[0].key: ...``."""
    detail, _, at = message.rpartition(" - at `")
    if not _:
        detail, at = message, "$`"
    parts = _split_json_path(at.rstrip("`"))
    unknown = re.match(r"Object contains unknown field `([^`]+)`", detail)
    if unknown:
        parts.append(unknown.group(1))
        detail = "unknown key"
    missing = re.match(r"Object missing required field `([^`]+)`", detail)
    if missing:
        parts.append(missing.group(1))
        detail = "required key is missing"
    return f"{_where(tuple(parts), text, source)}: {detail}"


def _split_json_path(at: str) -> list[str | int]:
    parts: list[str | int] = []
    for name, index, key in re.findall(r"\.([^.\[]+)|\[(\d+)\]|\[\"?([^\]\"]+)\"?\]", at[1:]):
        if name:
            parts.append(name)
        elif index:
            parts.append(int(index))
        else:
            parts.append(key)
    return parts


def format_key_path(path: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for p in path:
        if isinstance(p, str) and any(c in p for c in '. "'):
            p = f'"{p}"'  # a quoted table name: domains."example.com"
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _where(path: tuple[str | int, ...], text: str, source: str) -> str:
    line = locate_key(text, path) if text else None
    prefix = f"{source}:{line}" if line else source
    return f"{prefix}: {format_key_path(path)}" if source else format_key_path(path)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"' ]+?)\s*=")


_NAME_PART = re.compile(r"\"([^\"]*)\"|'([^']*)'|([^.\s]+)")


def _dotted_names(dotted: str) -> list[str | int]:
    """``domains."example.com".pool`` → ``["domains", "example.com", "pool"]``."""
    return [q or s or bare for q, s, bare in _NAME_PART.findall(dotted)]


def locate_key(text: str, path: tuple[str | int, ...]) -> int | None:
    """Best-effort line number (1-based) of the deepest written key on ``path``."""
    table: list[str | int] = []
    counters: dict[tuple[str | int, ...], int] = {}
    found: dict[tuple[str | int, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names: list[str | int] = _dotted_names(header.group(2))
            if header.group(1) == "[[":
                key = tuple(names)
                counters[key] = counters.get(key, -1) + 1
                names = [*names, counters[key]]
            table = names
            found.setdefault(tuple(table), lineno)
            continue
        key_match = _KEY.match(line)
        if key_match:
            names = _dotted_names(key_match.group(1))
            found.setdefault((*table, *names), lineno)
    for depth in range(len(path), 0, -1):
        if tuple(path[:depth]) in found:
            return found[tuple(path[:depth])]
    return None


# --- semantic checks that types alone cannot express ----------------------------------------


def _check(config: Config, text: str, source: str = "") -> None:
    def fail(path: tuple[str | int, ...], why: str) -> None:
        raise ConfigError(f"{_where(path, text, source)}: {why}")

    if config.gateway.workers < 1:
        fail(("gateway", "workers"), "must be at least 1")
    _check_store(config.store, fail)
    names: set[str] = set()
    for i, listener in enumerate(config.smtp.listeners):
        if listener.name in names:
            fail(("smtp", "listeners", i, "name"), f"duplicate listener name {listener.name!r}")
        names.add(listener.name)
        if not 0 <= listener.port <= 65535:
            fail(("smtp", "listeners", i, "port"), "must be between 0 and 65535")
        if listener.insecure_auth and not _is_loopback(listener.address):
            fail(
                ("smtp", "listeners", i, "insecure_auth"),
                "AUTH without TLS is only allowed on a loopback address",
            )
        if listener.tls != "none" and not (config.smtp.tls.cert_file and config.smtp.tls.key_file):
            fail(
                ("smtp", "listeners", i, "tls"),
                f"tls = {listener.tls!r} needs smtp.tls.cert_file and smtp.tls.key_file",
            )
    for key in ("cert_file", "key_file"):
        file = getattr(config.smtp.tls, key)
        if file and not os.access(file, os.R_OK):
            fail(("smtp", "tls", key), f"cannot read {file!r}")
    if config.smtp.max_message_size < 1024:
        fail(("smtp", "max_message_size"), "must be at least 1024 bytes")
    if config.smtp.max_recipients < 1:
        fail(("smtp", "max_recipients"), "must be at least 1")
    usernames: set[str] = set()
    key_hashes: set[str] = set()
    for tenant_name, tenant in config.tenants.items():
        for i, user in enumerate(tenant.smtp_users):
            path: tuple[str | int, ...] = ("tenants", tenant_name, "smtp_users", i)
            if user.username in usernames:
                fail((*path, "username"), f"username {user.username!r} is used twice")
            usernames.add(user.username)
            from gateway.passwords import is_password_hash

            if not is_password_hash(user.password_hash):
                fail((*path, "password_hash"), "not a hash made by `gateway hash-password`")
        for i, network in enumerate(tenant.smtp_networks):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                fail(
                    ("tenants", tenant_name, "smtp_networks", i), f"not an IP network: {network!r}"
                )
        _check_api_keys(tenant_name, tenant, key_hashes, fail)
        for i, domain in enumerate(tenant.sending_domains):
            if not _DOMAIN.match(domain):
                fail(("tenants", tenant_name, "sending_domains", i), f"not a domain: {domain!r}")
    if not 0 <= config.http.port <= 65535:
        fail(("http", "port"), "must be between 0 and 65535")
    if config.http.max_body_size < 1024:
        fail(("http", "max_body_size"), "must be at least 1024 bytes")
    if config.http.rate_limit < 0:
        fail(("http", "rate_limit"), "must be 0 (off) or more")
    if config.http.rate_burst < 1:
        fail(("http", "rate_burst"), "must be at least 1")
    _check_tracking(config.tracking, fail)
    delivery = config.delivery
    if not delivery.providers:
        fail(("delivery", "providers"), "name at least one provider")
    for i, name in enumerate(delivery.providers):
        if name not in config.providers:
            fail(("delivery", "providers", i), f"no provider named {name!r} in [providers]")
    if delivery.concurrency < 1:
        fail(("delivery", "concurrency"), "must be at least 1")
    if delivery.batch_size < 1:
        fail(("delivery", "batch_size"), "must be at least 1")
    if not delivery.retry_schedule:
        fail(("delivery", "retry_schedule"), "give at least one wait")
    for i, d in enumerate(delivery.retry_schedule):
        try:
            parse_duration(d)
        except ValueError as e:
            fail(("delivery", "retry_schedule", i), str(e))
    try:
        parse_duration(delivery.max_lifetime)
    except ValueError as e:
        fail(("delivery", "max_lifetime"), str(e))
    for name, provider in config.providers.items():
        if isinstance(provider, SmtpProviderSection) and provider.pool_size < 1:
            fail(("providers", name, "pool_size"), "must be at least 1")
    _check_identities(config, fail)
    _check_dns(config.dns, fail)


_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


def _check_api_keys(
    tenant_name: str,
    tenant: TenantSection,
    seen_hashes: set[str],
    fail: Callable[[tuple[str | int, ...], str], None],
) -> None:
    from gateway.tenants import is_api_key_hash

    names: set[str] = set()
    for i, key in enumerate(tenant.api_keys):
        path: tuple[str | int, ...] = ("tenants", tenant_name, "api_keys", i)
        if key.name in names:
            fail((*path, "name"), f"key name {key.name!r} is used twice in this tenant")
        names.add(key.name)
        if not is_api_key_hash(key.key_hash):
            fail((*path, "key_hash"), "not a hash made by `gateway api-key`")
        if key.key_hash in seen_hashes:
            fail((*path, "key_hash"), "the same key is configured twice")
        seen_hashes.add(key.key_hash)
        if not key.scopes:
            fail((*path, "scopes"), "give at least one of send, read, admin")
        if key.rate_limit < 0:
            fail((*path, "rate_limit"), "must be 0 (use http.rate_limit) or more")


def _check_identities(config: Config, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    """``[domains]`` and ``[ips]``: names, the provider an IP belongs to, warming dates."""
    identities: list[tuple[str, str, DomainSection | IpSection]] = [
        ("domains", name, section) for name, section in config.domains.items()
    ]
    identities += [("ips", name, section) for name, section in config.ips.items()]
    for table, name, section in identities:
        if table == "domains" and not _DOMAIN.match(name):
            fail(("domains", name), f"not a domain: {name!r}")
        if section.warming_schedule and section.warming_start is None:
            fail((table, name, "warming_start"), "give the date of day 1 of warming_schedule")
        if section.warming_start is not None and not section.warming_schedule:
            fail((table, name, "warming_schedule"), "warming_start needs a warming_schedule")
    routes: dict[str, str] = {}
    for name, ip in config.ips.items():
        try:
            ipaddress.ip_address(name)
        except ValueError:
            fail(("ips", name), f"not an IP address: {name!r}")
        if ip.provider not in config.providers:
            fail(("ips", name, "provider"), f"no provider named {ip.provider!r} in [providers]")
        if ip.provider in routes:
            fail(
                ("ips", name, "provider"),
                f"provider {ip.provider!r} already sends from {routes[ip.provider]}",
            )
        routes[ip.provider] = name
    pools = {ip.pool for ip in config.ips.values() if ip.pool}
    for name, domain in config.domains.items():
        if domain.pool and domain.pool not in pools:
            fail(("domains", name, "pool"), f"no [ips] entry has pool = {domain.pool!r}")
        _check_domain_dns(name, domain, fail)


def _check_domain_dns(
    name: str, domain: DomainSection, fail: Callable[[tuple[str | int, ...], str], None]
) -> None:
    """The DNS identity fields of ``[domains."<name>"]``: host names, networks, URIs."""
    for key in ("spf_include",):
        for i, host in enumerate(getattr(domain, key)):
            if not _DOMAIN.match(host):
                fail(("domains", name, key, i), f"not a domain: {host!r}")
    for key in ("return_path", "return_path_mx", "return_path_cname", "tracking_host"):
        host = getattr(domain, key)
        if host and not _DOMAIN.match(host):
            fail(("domains", name, key), f"not a host name: {host!r}")
    for key in ("tracking_cname", "mta_sts_cname"):
        host = getattr(domain, key)
        if host and not _DOMAIN.match(host):
            fail(("domains", name, key), f"not a host name: {host!r}")
    for i, network in enumerate(domain.spf_ip):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            fail(("domains", name, "spf_ip", i), f"not an IP address or network: {network!r}")
    if domain.return_path_mx and domain.return_path_cname:
        fail(("domains", name, "return_path_cname"), "give return_path_mx or _cname, not both")
    if (domain.return_path_mx or domain.return_path_cname) and not domain.return_path:
        fail(("domains", name, "return_path"), "name the bounce domain these records are for")
    if domain.return_path and not domain.return_path.lower().endswith("." + name.lower()):
        fail(("domains", name, "return_path"), f"must be a subdomain of {name} (DMARC alignment)")
    for key in ("dmarc_rua", "tls_rpt_rua"):
        for uri in filter(None, getattr(domain, key).split(",")):
            if not re.fullmatch(r"(mailto:[^@\s,;]+@[^@\s,;]+|https://[^\s,;]+)", uri.strip()):
                fail(("domains", name, key), f"give mailto:address or https:// URIs, not {uri!r}")
    if domain.mta_sts_mode and domain.mta_sts_mode != "none" and not domain.mta_sts_mx:
        fail(("domains", name, "mta_sts_mx"), f"mta_sts_mode = {domain.mta_sts_mode!r} needs MX")
    for i, pattern in enumerate(domain.mta_sts_mx):
        if not _DOMAIN.match(pattern.removeprefix("*.")):
            fail(("domains", name, "mta_sts_mx", i), f"not an MX host pattern: {pattern!r}")
    if not 86400 <= domain.mta_sts_max_age <= 31557600:
        fail(("domains", name, "mta_sts_max_age"), "between 86400 (a day) and 31557600 (a year)")


def _check_dns(dns: DnsSection, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    from gateway.dnsauth.lookup import parse_nameserver

    for i, server in enumerate(dns.resolvers):
        try:
            parse_nameserver(server)
        except ValueError as e:
            fail(("dns", "resolvers", i), str(e))
    if not 0 < dns.timeout <= 60:
        fail(("dns", "timeout"), "seconds, more than 0 and at most 60")


def _check_tracking(
    tracking: TrackingSection, fail: Callable[[tuple[str | int, ...], str], None]
) -> None:
    from gateway.tokens import KEY_ID, MIN_SECRET_BYTES

    if tracking.base_url:
        scheme, sep, rest = tracking.base_url.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "?#"):
            fail(("tracking", "base_url"), "give an absolute http(s) URL without query or fragment")
    for key_id, secret in tracking.keys.items():
        if not KEY_ID.match(key_id):
            fail(("tracking", "keys", key_id), "a key id is 1-16 letters, digits, '-' or '_'")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            fail(("tracking", "keys", key_id), f"a secret needs at least {MIN_SECRET_BYTES} bytes")
    if tracking.signing_key and tracking.signing_key not in tracking.keys:
        fail(("tracking", "signing_key"), f"no key {tracking.signing_key!r} in tracking.keys")
    if tracking.token_lifetime:
        try:
            parse_duration(tracking.token_lifetime)
        except ValueError as e:
            fail(("tracking", "token_lifetime"), str(e))


def _check_store(store: StoreSection, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    if store.backend != "redis":
        return
    from gateway.store.redis_client import parse_redis_url

    try:
        parse_redis_url(store.url)
    except ValueError as e:
        fail(("store", "url"), str(e))
    if not store.prefix or any(c in store.prefix for c in "{}"):
        fail(("store", "prefix"), "must be non-empty and without braces")
    try:
        lease = parse_duration(store.lease)
    except ValueError as e:
        fail(("store", "lease"), str(e))
    else:
        if lease < 3:
            fail(("store", "lease"), "must be at least 3s (it is renewed every third of it)")


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _store_location(config: Config) -> str:
    if config.store.backend != "redis":
        return str(config.spool_dir)
    from gateway.store.redis_client import parse_redis_url

    return f"{parse_redis_url(config.store.url).redacted} (prefix {config.store.prefix})"


def summarize(config: Config) -> str:
    """The short human summary printed by ``gateway check-config``."""
    lines = [
        f"hostname      {config.gateway.hostname}",
        f"workers       {config.gateway.workers}",
        f"store         {config.store.backend} at {_store_location(config)}",
    ]
    for listener in config.smtp.listeners:
        auth = "AUTH without TLS allowed" if listener.insecure_auth else "AUTH over TLS only"
        lines.append(
            f"smtp listener {listener.name}: {listener.address}:{listener.port} "
            f"tls={listener.tls}, {auth}"
        )
    lines.append(
        f"smtp limits   size {config.smtp.max_message_size} bytes, "
        f"{config.smtp.max_recipients} recipients"
    )
    http = config.http
    lines.append(
        f"http api      {http.address}:{http.port}, {http.rate_limit:g} req/s per key"
        if http.enabled
        else "http api      off"
    )
    for name, tenant in config.tenants.items():
        lines.append(
            f"tenant        {name}: {len(tenant.smtp_users)} SMTP user(s), "
            f"{len(tenant.api_keys)} API key(s), "
            f"trusted networks {', '.join(tenant.smtp_networks) or 'none'}"
        )
    for name, provider in config.providers.items():
        where = (
            f"{provider.host}:{provider.port} tls={provider.tls}"
            if isinstance(provider, SmtpProviderSection)
            else "local outbox"
        )
        lines.append(f"provider      {name} ({type(provider).__struct_config__.tag}): {where}")
    d = config.delivery
    lines.append(
        f"delivery      via {' → '.join(d.providers)}, concurrency {d.concurrency}, "
        f"retries {', '.join(d.retry_schedule)} for up to {d.max_lifetime}, "
        f"DSN {'on' if d.dsn else 'off'}"
    )
    return "\n".join(lines)


S = TypeVar("S", bound=msgspec.Struct)


def plugin_settings(config: Config, name: str, settings_type: type[S]) -> S:
    """Decode ``[plugins.<name>]`` into a plugin's own Struct; errors name ``plugins.<name>.key``.

    The ``enabled`` key belongs to the gateway (it decides whether the plugin is registered)
    and is removed before decoding.
    """
    table = {k: v for k, v in config.plugins.get(name, {}).items() if k != "enabled"}
    try:
        return msgspec.convert(table, settings_type)
    except msgspec.ValidationError as e:
        detail, sep, at = str(e).rpartition(" - at `$")
        message = f"{detail} - at `$.plugins.{name}{at}" if sep else f"{e} - at `$.plugins.{name}`"
        raise ConfigError(_describe_validation_error(message, "", "")) from None
