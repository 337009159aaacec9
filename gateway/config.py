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
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from gateway.durations import parse_duration
from gateway.streams import StreamSection, check_streams


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


# --- sections -------------------------------------------------------------------------------

_STRICT: dict[str, Any] = {"forbid_unknown_fields": True, "kw_only": True}


class GatewaySection(msgspec.Struct, **_STRICT):
    hostname: str = "localhost"
    """Name used in the SMTP banner, Received headers, Message-IDs and DSNs."""
    data_dir: str = "var"
    """Where the spool and the capture outbox live; relative to the config file's folder (the
    working directory when there is no config file)."""
    workers: int = 1
    """Worker processes sharing the listeners (SO_REUSEPORT); each owns one spool shard."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json", "logfmt"] = "text"
    """``text`` for people, ``json`` (one object per line) or ``logfmt`` for log collectors."""
    shutdown_grace: str = "30s"
    """On SIGTERM: how long open SMTP sessions and deliveries in flight get to finish."""
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

    min_replicas: int = 0
    """Redis only (single or Sentinel): answer 250/202 only once this many replicas have the
    message, so a failover cannot lose accepted mail (``WAIT``); 0 trusts the AOF alone."""
    replica_timeout: str = "1s"
    """Redis only: how long ``min_replicas`` may take before the message is refused (451)."""
    allow_volatile: bool = False
    """Redis only: start even when the server keeps data in memory only (``appendonly no``),
    where a Redis restart loses every message it acknowledged; off, the gateway refuses to
    start on such a server (a test bench may turn it on)."""
    retention: str = "30d"
    """How long a message is kept after it is accepted, once every delivery of it is final
    (delivered, bounced, expired, skipped); ``"forever"`` keeps everything."""

    @property
    def lease_seconds(self) -> float:
        return parse_duration(self.lease)

    @property
    def replica_timeout_seconds(self) -> float:
        return parse_duration(self.replica_timeout)

    @property
    def retention_seconds(self) -> float | None:
        """``None`` when messages are kept forever."""
        return None if self.retention == "forever" else parse_duration(self.retention)


class ListenerSection(msgspec.Struct, **_STRICT):
    name: str
    port: int
    address: str = "127.0.0.1"
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    """``starttls`` (submission, 587), ``implicit`` (submissions, 465) or ``none``."""
    insecure_auth: bool = False
    """Allow AUTH without TLS. Only for a listener bound to loopback, for development."""
    require_tls: bool | None = None
    """Refuse every command but EHLO/HELO/NOOP/QUIT/STARTTLS before STARTTLS, trusted networks
    included. Default: on for a ``starttls`` listener not bound to loopback."""
    max_sessions: int = 500
    """Sessions open at once on this listener; one more is answered ``421 4.7.0``."""
    max_sessions_per_client: int = 20
    """Sessions open at once from one client address (an IPv6 client: its ``ipv6_prefix``)."""
    max_connections_per_minute: int = 300
    """New connections per client address per minute (0: no limit)."""
    ipv6_prefix: int = 64
    """IPv6 clients are counted per network of this length (one site usually holds a /64)."""
    max_session_time: float = 3600.0
    """Seconds a session may last, however busy; then ``421 4.7.0``."""
    max_junk_commands: int = 100
    """NOOP, RSET, VRFY and HELP a session may send between two accepted messages (Postfix's
    ``smtpd_junk_command_limit``)."""
    tls_handshake_timeout: float = 10.0
    """Seconds a TLS handshake (implicit TLS or after STARTTLS) may take."""

    stream: str = ""
    """The message stream of mail submitted here (``gateway/streams.py``); empty:
    ``transactional``. An SMTP user's ``stream`` and an ``X-Gateway-Stream`` header win."""

    def requires_tls(self) -> bool:
        if self.require_tls is not None:
            return self.require_tls
        return self.tls == "starttls" and not is_loopback(self.address)


class SmtpTlsSection(msgspec.Struct, **_STRICT):
    cert_file: str = ""
    key_file: str = ""


def _default_listeners() -> list[ListenerSection]:
    return [ListenerSection(name="dev", port=2525, tls="none", insecure_auth=True)]


class SmtpAuthSection(msgspec.Struct, **_STRICT):
    """``[smtp.auth]``: how password guessing is slowed down and stopped."""

    max_attempts_per_session: int = 3
    """AUTH commands a session may fail; the next gets ``421 4.7.0`` and the session ends."""
    failure_delay: float = 1.0
    """Seconds a failed AUTH waits before its ``535``, times the client's recent failures
    (capped at ``max_failure_delay``)."""
    max_failure_delay: float = 8.0
    client_failures: int = 10
    """Failures from one client address within ``window`` that start its cooling-off."""
    user_failures: int = 30
    """Failures for one username (from anywhere) within ``window`` that start its cooling-off."""
    window: float = 900.0
    """Seconds over which failures are counted."""
    cooling_off: float = 900.0
    """Seconds AUTH answers ``454 4.7.0`` to a client or username over its limit."""
    password_workers: int = 2
    """Threads that check passwords (scrypt), shared by every listener."""
    password_queue: int = 64
    """Password checks that may wait for a thread; beyond that AUTH answers ``454 4.7.0``."""


class SmtpSection(msgspec.Struct, **_STRICT):
    listeners: list[ListenerSection] = msgspec.field(default_factory=_default_listeners)
    tls: SmtpTlsSection = msgspec.field(default_factory=SmtpTlsSection)
    max_message_size: int = 25 * 1024 * 1024
    """Bytes; advertised as SIZE and enforced during DATA."""
    max_recipients: int = 100
    timeout: float = 300.0
    """Seconds of client silence (no bytes at all) before the session gets ``421 4.4.2`` and is
    closed."""
    min_data_rate: int = 10240
    """Bytes per second a DATA upload must average: DATA may last at most ``timeout`` plus
    ``max_message_size / min_data_rate`` seconds (1 h with the defaults)."""
    smtputf8: bool = True
    auth: SmtpAuthSection = msgspec.field(default_factory=SmtpAuthSection)
    widest_trusted_prefix_v4: int = 16
    """``check-config`` refuses a tenant's ``smtp_networks`` entry wider than this (IPv4)..."""
    widest_trusted_prefix_v6: int = 48
    """...or than this (IPv6), unless the tenant sets ``allow_wide_smtp_networks``."""


class SmtpUserSection(msgspec.Struct, **_STRICT):
    username: str
    password_hash: str
    """Output of ``gateway hash-password``; the password itself is never stored."""
    stream: str = ""
    """The message stream of this user's mail; empty: the listener's (or ``transactional``)."""


class ApiKeySection(msgspec.Struct, **_STRICT):
    name: str
    """Shown in logs and rate-limit answers; unique within the tenant."""
    key_hash: str
    """Output of ``gateway api-key``; the key itself is never stored."""
    scopes: list[Literal["send", "read", "admin", "operator"]] = msgspec.field(
        default_factory=lambda: ["send", "read"]
    )
    """``send`` (POST messages), ``read`` (status, stats, suppressions), ``admin`` (everything
    of its tenant), ``operator`` (every tenant's sending domains and IPs: the operator's view)."""
    rate_limit: float = 0.0
    """Requests per second for this key; 0 means ``http.rate_limit``."""


WEBHOOK_EVENT_TYPES = (
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
    "rejected",
    "suppressed",
    "contact.subscribed",
    "contact.confirmed",
    "contact.preferences_changed",
    "contact.unsubscribed",
    "contact.imported",
    "contact.erased",
    "contact.status_changed",
    "flow.send",
    "flow.goal",
    "flow.end",
)
"""Event types a sender's webhook endpoint may subscribe to: ``gateway.events.EventKind``,
``contact.`` + ``gateway.events.ContactEventKind`` (the audience plugin's contact events), and
the automation plugin's ``flow.send``, ``flow.goal`` (a goal ended an enrolment) and
``flow.end``."""


class WebhookEndpointSection(msgspec.Struct, **_STRICT):
    """One of a tenant's endpoints: events are POSTed to ``url``, signed per Standard Webhooks."""

    url: str
    secret: str
    """``whsec_`` + base64 of 24-64 random bytes (``gateway webhooks secret``); use ``${ENV}``."""
    events: list[str] = msgspec.field(default_factory=list)
    """Event types to send (see ``WEBHOOK_EVENT_TYPES``); empty means all of them."""
    enabled: bool = True


class TenantSection(msgspec.Struct, **_STRICT):
    smtp_users: list[SmtpUserSection] = msgspec.field(default_factory=list)
    smtp_networks: list[str] = msgspec.field(default_factory=list)
    """Client addresses/CIDRs trusted to submit for this tenant without AUTH (legacy apps).
    The tenant named ``default`` trusts loopback (``LOOPBACK_NETWORKS``) unless this is set."""
    api_keys: list[ApiKeySection] = msgspec.field(default_factory=list)
    sending_domains: list[str] = msgspec.field(default_factory=list)
    """Domains (and their subdomains) this tenant may send from, on SMTP and HTTP alike: the
    envelope sender and every author in ``From:``/``Sender:``. Empty means any domain no other
    tenant lists."""
    allow_null_sender: bool = False
    """Accept ``MAIL FROM:<>`` (bounces, auto-replies) from this tenant."""
    allow_wide_smtp_networks: bool = False
    """Let ``smtp_networks`` hold networks wider than ``smtp.widest_trusted_prefix_v4``/``_v6``
    (every address in them may send without AUTH)."""
    webhooks: dict[str, WebhookEndpointSection] = msgspec.field(default_factory=dict)
    """``[tenants.<t>.webhooks.<name>]``: the tenant's own endpoints for event webhooks."""
    streams: dict[str, StreamSection] = msgspec.field(default_factory=dict)
    """``[tenants.<t>.streams.<name>]``: message streams besides ``transactional``."""


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
    metrics_token: str = ""
    """``/metrics`` shows tenant names and volumes: with a token (use ``${ENV}``), it answers
    only ``Authorization: Bearer <token>``, from anywhere; without one, only loopback clients."""


class TemplatesSection(msgspec.Struct, **_STRICT):
    """Limits for clients' templates (batch sends), rendered in worker processes off the
    event loop. Each gateway worker process has its own pool: its memory is bounded by
    ``workers * memory`` on top of the gateway itself."""

    workers: int = 2
    """Render processes per gateway worker; jobs beyond them wait for a free one."""
    cpu_time: str = "1s"
    """CPU time one rendered field may take (per recipient); past it the request gets 422."""
    memory: int = 256 * 1024 * 1024
    """Bytes of address space per render process (``RLIMIT_AS``), interpreter included."""
    output_size: int = 5 * 1024 * 1024
    """Characters one rendered field may have."""

    @property
    def cpu_seconds(self) -> float:
        return parse_duration(self.cpu_time)


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


LOOPBACK_NETWORKS = ("127.0.0.1/32", "::1/128")
"""What the tenant named ``default`` trusts unless its table sets ``smtp_networks``."""


def _default_tenants() -> dict[str, TenantSection]:
    return {"default": TenantSection(smtp_networks=list(LOOPBACK_NETWORKS), allow_null_sender=True)}


def _default_retry_schedule() -> list[str]:
    return ["5m", "10m", "20m", "40m", "1h20m", "2h40m", "4h"]


class DeliverySection(msgspec.Struct, **_STRICT):
    providers: list[str] = msgspec.field(default_factory=lambda: ["capture"])
    """Provider names in failover order: a temporary failure moves on to the next one."""
    concurrency: int = 100
    broadcast_concurrency: int = 0
    """Most broadcast-stream deliveries in flight per worker, so transactional mail always
    finds a free slot; 0: 90 % of ``concurrency`` (at least 1)."""
    batch_size: int = 200
    retry_schedule: list[str] = msgspec.field(default_factory=_default_retry_schedule)
    """Waits between attempts; the last one repeats until ``max_lifetime``."""
    max_lifetime: str = "3d"
    dsn: bool = False
    """Send an RFC 3464 bounce to the envelope sender of SMTP-submitted mail."""

    @property
    def broadcast_slots(self) -> int:
        return self.broadcast_concurrency or max(1, self.concurrency * 9 // 10)

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


class MxProviderSection(msgspec.Struct, tag="mx", tag_field="type", **_STRICT):
    """Direct delivery to each recipient domain's MX hosts (``gateway/providers/mx.py``)."""

    nameservers: list[str] = msgspec.field(default_factory=list)
    """Resolvers to ask (IP addresses); empty means the system's (``/etc/resolv.conf``)."""
    dns_port: int = 53
    port: int = 25
    """SMTP port on the MX hosts. Always 25 on the internet; other values are for tests."""
    timeout: float = 60.0
    """Seconds per SMTP command and per DNS query."""
    connections_per_domain: int = 5
    """Sessions open at once to one destination domain (new or reused)."""
    idle_connections: int = 2
    """Sessions kept open per MX host for reuse by the next message."""
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    """``opportunistic``: use TLS when offered, without checking the certificate, and retry
    in plain text if the handshake fails; ``required``: only deliver over verified TLS."""
    mta_sts: bool = True
    """Fetch and enforce MTA-STS policies (RFC 8461) of domains that publish one."""
    mta_sts_port: int = 443
    """HTTPS port of ``mta-sts.<domain>`` (tests only)."""
    ca_file: str = ""
    """CA certificates (PEM) trusted for verified TLS (MTA-STS, ``required``) and the policy
    fetch; empty means the system store."""
    source_address: str = ""
    """Local IP address to send from (a dedicated sending IP); empty lets the OS choose."""


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
    | MxProviderSection
)


def _default_providers() -> dict[str, ProviderSection]:
    return {"capture": CaptureProviderSection()}


class WebhooksSection(msgspec.Struct, **_STRICT):
    """How event webhooks to senders are delivered (the endpoints are per tenant)."""

    retry_schedule: list[str] = msgspec.field(
        default_factory=lambda: ["5s", "5m", "30m", "2h", "5h", "10h"]
    )
    """Waits between attempts after a failure; the last one repeats until ``max_age``."""
    max_age: str = "1d"
    """An event not accepted by its endpoint within this long is marked ``failed``."""
    timeout: float = 10.0
    """Seconds per HTTP request to an endpoint."""
    concurrency: int = 10
    """Requests in flight at once, per worker."""

    @property
    def retry_delays(self) -> list[float]:
        return [parse_duration(d) for d in self.retry_schedule]

    @property
    def max_age_seconds(self) -> float:
        return parse_duration(self.max_age)


class RouteSection(msgspec.Struct, **_STRICT):
    """``[[routes]]``: which providers carry the mail a rule matches, and how they share it.

    Every match key that is given must match (empty means any); the first route that matches
    a delivery is used, and a delivery no route matches goes via ``delivery.providers``."""

    name: str
    providers: list[str]
    """Provider names this route uses."""
    strategy: Literal["priority", "weighted", "round_robin"] = "priority"
    """``priority``: in the order listed; ``weighted``: the first pick drawn by ``weights``;
    ``round_robin``: each delivery starts at the next provider. The others follow as
    failover."""
    weights: list[int] = msgspec.field(default_factory=list)
    """For ``weighted``: one positive weight per provider."""
    failover: bool = True
    """Try the route's next provider at once when one fails temporarily."""
    tenants: list[str] = msgspec.field(default_factory=list)
    sending_domains: list[str] = msgspec.field(default_factory=list)
    """Envelope sender domains (exact, or ``*.example.com`` for subdomains)."""
    tags: list[str] = msgspec.field(default_factory=list)
    """HTTP API tags; any one of them matches."""
    recipient_domains: list[str] = msgspec.field(default_factory=list)
    """Destination domains (exact, or ``*.example.com``)."""
    isps: list[Literal["gmail", "microsoft", "yahoo", "other"]] = msgspec.field(
        default_factory=list
    )
    """Mailbox providers, known by domain or by MX host; ``other`` is none of them."""
    mx_hosts: list[str] = msgspec.field(default_factory=list)
    """Patterns for the destination's MX host names (``*.google.com``); needs a DNS look-up."""


class ProviderLimitSection(msgspec.Struct, **_STRICT):
    """``[routing.limits.<provider>]``: sends a provider takes, counted across all workers."""

    per_second: int = 0
    """0 means no limit."""
    per_minute: int = 0
    """Per clock minute; 0 means no limit."""
    per_hour: int = 0
    """Per clock hour; 0 means no limit."""
    per_day: int = 0
    """Per UTC day; 0 means no limit."""


class BreakerSection(msgspec.Struct, **_STRICT):
    """``[routing.breaker]``: when a provider is taken out of rotation, and how it comes back."""

    failures: int = 5
    """Consecutive failed sends that open the breaker."""
    error_rate: float = 0.5
    """Share of failed sends within ``window`` that opens it (with ``min_sends`` at least)."""
    window: str = "60s"
    min_sends: int = 20
    cooldown: str = "30s"
    """How long an open breaker waits before letting a probe through (half-open)."""
    probes: int = 1
    """Sends let through at once while half-open; a success closes the breaker."""

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)

    @property
    def cooldown_seconds(self) -> float:
        return parse_duration(self.cooldown)


class RoutingSection(msgspec.Struct, **_STRICT):
    failover: bool = True
    """For ``delivery.providers`` (mail no route matches): fail over to the next provider."""
    send_timeout: str = "2m"
    """Longest one provider send may take before it counts as timed out."""
    breaker: BreakerSection = msgspec.field(default_factory=BreakerSection)
    limits: dict[str, ProviderLimitSection] = msgspec.field(default_factory=dict)
    """Provider name → its limits."""
    nameservers: list[str] = msgspec.field(default_factory=list)
    """Resolvers for ``isps``/``mx_hosts`` rules; empty means the system's."""
    dns_port: int = 53

    @property
    def send_timeout_seconds(self) -> float:
        return parse_duration(self.send_timeout)


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


_SNS_HOSTS = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"


class SesWebhookSection(msgspec.Struct, **_STRICT):
    """``POST /webhooks/ses``: SES events delivered by Amazon SNS (``docs/providers.md``)."""

    topic_arns: list[str] = msgspec.field(default_factory=list)
    """SNS topics whose messages are accepted; empty accepts any topic (not recommended)."""
    cert_host_pattern: str = _SNS_HOSTS
    """Regular expression the host of ``SigningCertURL`` must match (HTTPS only)."""
    subscribe_host_pattern: str = _SNS_HOSTS
    """Regular expression the host of a ``SubscribeURL`` must match before it is fetched."""
    confirm_subscriptions: bool = True
    """Confirm an SNS subscription by fetching its ``SubscribeURL``."""
    ca_file: str = ""
    """Extra CA certificates (PEM) for those HTTPS fetches; empty means the system store."""
    max_age: str = "1h"
    """Messages whose ``Timestamp`` is older (or further in the future) are refused as replays."""


class SendgridWebhookSection(msgspec.Struct, **_STRICT):
    """``POST /webhooks/sendgrid``: SendGrid's signed Event Webhook."""

    public_key: str
    """The verification key SendGrid shows for the signed webhook (base64 DER or PEM)."""
    max_age: str = "10m"
    """Requests whose ``X-Twilio-Email-Event-Webhook-Timestamp`` is older are refused."""


class MailgunWebhookSection(msgspec.Struct, **_STRICT):
    """``POST /webhooks/mailgun``: Mailgun webhooks, signed with HMAC-SHA256."""

    signing_key: str
    """The HTTP webhook signing key of the Mailgun account; use ``${ENV}``."""
    max_age: str = "10m"
    """Requests whose signature ``timestamp`` is older are refused; a ``token`` is accepted once."""


class PostmarkWebhookSection(msgspec.Struct, **_STRICT):
    """``POST /webhooks/postmark``: Postmark webhooks (basic auth and/or a secret header)."""

    username: str = ""
    """Basic auth user put in the webhook URL at Postmark (``https://user:pass@host/...``)."""
    password: str = ""
    secret_header: str = ""
    """Name of a custom header set on the webhook at Postmark, e.g. ``X-Gateway-Secret``."""
    secret: str = ""
    """Its value; use ``${ENV}``."""


class ProviderWebhooksSection(msgspec.Struct, **_STRICT):
    """``[provider_webhooks.<provider>]``: an endpoint answers only when its table exists."""

    ses: SesWebhookSection | None = None
    sendgrid: SendgridWebhookSection | None = None
    mailgun: MailgunWebhookSection | None = None
    postmark: PostmarkWebhookSection | None = None
    dedup_window: str = "7d"
    """How long provider event ids (and Mailgun tokens) are remembered for de-duplication."""


class BouncesSection(msgspec.Struct, **_STRICT):
    """``[bounces]``: VERP return paths for direct/SMTP delivery and the inbound listener that
    reads the DSNs and ARF complaints coming back (``gateway/bounces.py``)."""

    domain: str = ""
    """The bounce domain (its MX points at this listener); empty switches VERP off."""
    local_part: str = "bounces"
    """Return paths look like ``<local_part>+<message>-<delivery>-<mac>@<domain>``."""
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    """Key id → HMAC secret (at least 32 bytes; use ``${ENV}``). Every key verifies."""
    signing_key: str = ""
    """The key id that signs new return paths; default: the first of ``keys``."""
    listen: bool = True
    """Run the inbound SMTP listener when ``domain`` is set."""
    address: str = "127.0.0.1"
    port: int = 2526
    """0 picks a free port (tests). Port 25 on the bounce domain's MX host in production."""
    max_message_size: int = 1024 * 1024
    """Bytes; reports are small, and the original message is not needed whole."""
    timeout: float = 60.0
    """Seconds of client silence before the session is dropped."""


class Config(msgspec.Struct, **_STRICT):
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    smtp: SmtpSection = msgspec.field(default_factory=SmtpSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    templates: TemplatesSection = msgspec.field(default_factory=TemplatesSection)
    tracking: TrackingSection = msgspec.field(default_factory=TrackingSection)
    tenants: dict[str, TenantSection] = msgspec.field(default_factory=_default_tenants)
    delivery: DeliverySection = msgspec.field(default_factory=DeliverySection)
    providers: dict[str, ProviderSection] = msgspec.field(default_factory=_default_providers)
    routing: RoutingSection = msgspec.field(default_factory=RoutingSection)
    routes: list[RouteSection] = msgspec.field(default_factory=list)
    domains: dict[str, DomainSection] = msgspec.field(default_factory=dict)
    webhooks: WebhooksSection = msgspec.field(default_factory=WebhooksSection)
    dns: DnsSection = msgspec.field(default_factory=DnsSection)
    ips: dict[str, IpSection] = msgspec.field(default_factory=dict)
    provider_webhooks: ProviderWebhooksSection = msgspec.field(
        default_factory=ProviderWebhooksSection
    )
    bounces: BouncesSection = msgspec.field(default_factory=BouncesSection)
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
    return parse_config(text, source=str(path), base_dir=Path(path).absolute().parent)


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Parse and validate ``text``; with ``base_dir`` (the config file's folder), relative
    paths in it resolve against that folder rather than the shell's working directory."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    data = _expand_env(data, (), text, source)
    if base_dir is not None:
        _resolve_paths(data, base_dir)
    tenants = data.get("tenants")
    default_tenant = tenants.get("default") if isinstance(tenants, dict) else None
    if isinstance(default_tenant, dict):
        # Adding an API key to [tenants.default] must not cut the loopback trust it had.
        default_tenant.setdefault("smtp_networks", list(LOOPBACK_NETWORKS))
    _check_named_tables(data, text, source)
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(_describe_validation_error(str(e), text, source)) from None
    _check(config, text, source)
    return config


PATH_KEYS: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("gateway", "data_dir"), "var"),
    (("store", "path"), None),
    (("smtp", "tls", "cert_file"), None),
    (("smtp", "tls", "key_file"), None),
    (("providers", "*", "directory"), None),
    (("providers", "*", "ca_file"), None),
    (("provider_webhooks", "ses", "ca_file"), None),
    (("plugins", "dkim", "key_dir"), "dns/keys"),
)
"""Keys that hold file system paths, ``*`` for any table name, with the default that is
resolved too when the key's table is there but the key is not (``None``: nothing to resolve)."""


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make the relative paths of ``PATH_KEYS`` in ``data`` absolute against ``base_dir``."""

    def tables(node: Any, parts: tuple[str, ...]) -> list[dict[str, Any]]:
        if not parts:
            return [node] if isinstance(node, dict) else []
        if not isinstance(node, dict):
            return []
        children = node.values() if parts[0] == "*" else [node.get(parts[0], {})]
        return [table for child in children for table in tables(child, parts[1:])]

    data.setdefault("gateway", {})  # so that the default data_dir resolves too
    for (*where, key), default in PATH_KEYS:
        for table in tables(data, tuple(where)):
            value = table.get(key, default)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                table[key] = str(base_dir / value)


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
    if len(parts) == 3 and parts[0] == "providers" and parts[2] == "type":
        kinds = ", ".join(t.__struct_config__.tag for t in typing.get_args(ProviderSection))
        detail = f"{detail}; the provider types are {kinds}"
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
        if listener.insecure_auth and not is_loopback(listener.address):
            fail(
                ("smtp", "listeners", i, "insecure_auth"),
                "AUTH without TLS is only allowed on a loopback address",
            )
        if listener.tls != "none" and not (config.smtp.tls.cert_file and config.smtp.tls.key_file):
            fail(
                ("smtp", "listeners", i, "tls"),
                f"tls = {listener.tls!r} needs smtp.tls.cert_file and smtp.tls.key_file",
            )
        if listener.require_tls and listener.tls == "none":
            fail(("smtp", "listeners", i, "require_tls"), 'needs tls = "starttls" or "implicit"')
        _check_listener_limits(listener, ("smtp", "listeners", i), fail)
    for key in ("cert_file", "key_file"):
        file = getattr(config.smtp.tls, key)
        if file and not os.access(file, os.R_OK):
            fail(("smtp", "tls", key), f"cannot read {file!r}")
    if config.smtp.max_message_size < 1024:
        fail(("smtp", "max_message_size"), "must be at least 1024 bytes")
    if config.smtp.max_recipients < 1:
        fail(("smtp", "max_recipients"), "must be at least 1")
    if config.smtp.timeout <= 0:
        fail(("smtp", "timeout"), "must be more than 0")
    if config.smtp.min_data_rate < 1:
        fail(("smtp", "min_data_rate"), "must be at least 1 byte per second")
    _check_smtp_auth(config.smtp.auth, fail)
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
                parsed = ipaddress.ip_network(network, strict=False)
            except ValueError:
                fail(
                    ("tenants", tenant_name, "smtp_networks", i), f"not an IP network: {network!r}"
                )
            widest = (
                config.smtp.widest_trusted_prefix_v4
                if parsed.version == 4
                else config.smtp.widest_trusted_prefix_v6
            )
            if parsed.prefixlen < widest and not tenant.allow_wide_smtp_networks:
                fail(
                    ("tenants", tenant_name, "smtp_networks", i),
                    f"{network} is wider than /{widest}: every address in it could send "
                    f"without AUTH; narrow it, or set "
                    f"tenants.{tenant_name}.allow_wide_smtp_networks = true",
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
    _check_templates(config.templates, fail)
    _check_tracking(config.tracking, fail)
    _check_webhooks(config, fail)
    _check_feedback(config, fail)
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
    if not 0 <= delivery.broadcast_concurrency <= delivery.concurrency:
        fail(("delivery", "broadcast_concurrency"), "must be between 0 and concurrency")
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
        if isinstance(provider, MxProviderSection):
            _check_mx_provider(name, provider, fail)
    _check_routing(config, fail)
    _check_identities(config, fail)
    _check_dns(config.dns, fail)
    check_streams(config, fail)


_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z]{2,63}$"
)
"""A DNS name that need not be a host name: ``_spf.google.com``, ``_dmarc.example.com``
(RFC 2181 §11 allows any label; underscores are common in TXT owner names)."""


def is_domain_name(value: str) -> bool:
    """A syntactically valid DNS domain name with at least two labels."""
    return bool(_DOMAIN.match(value))


def _check_templates(
    templates: TemplatesSection, fail: Callable[[tuple[str | int, ...], str], None]
) -> None:
    if templates.workers < 1:
        fail(("templates", "workers"), "must be at least 1")
    if templates.memory < 64 * 1024 * 1024:
        fail(("templates", "memory"), "must be at least 64 MiB (67108864 bytes)")
    if templates.output_size < 1:
        fail(("templates", "output_size"), "must be at least 1")
    try:
        if templates.cpu_seconds <= 0:
            fail(("templates", "cpu_time"), "must be more than 0s")
    except ValueError as e:
        fail(("templates", "cpu_time"), str(e))


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
            fail((*path, "scopes"), "give at least one of send, read, admin, operator")
        if key.rate_limit < 0:
            fail((*path, "rate_limit"), "must be 0 (use http.rate_limit) or more")


def _check_webhooks(config: Config, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    import base64
    import binascii

    for key in ("shutdown_grace",):
        try:
            parse_duration(getattr(config.gateway, key))
        except ValueError as e:
            fail(("gateway", key), str(e))
    section = config.webhooks
    if not section.retry_schedule:
        fail(("webhooks", "retry_schedule"), "give at least one wait")
    for i, d in enumerate(section.retry_schedule):
        try:
            parse_duration(d)
        except ValueError as e:
            fail(("webhooks", "retry_schedule", i), str(e))
    try:
        parse_duration(section.max_age)
    except ValueError as e:
        fail(("webhooks", "max_age"), str(e))
    if section.timeout <= 0:
        fail(("webhooks", "timeout"), "must be more than 0")
    if section.concurrency < 1:
        fail(("webhooks", "concurrency"), "must be at least 1")
    for tenant_name, tenant in config.tenants.items():
        for name, endpoint in tenant.webhooks.items():
            path: tuple[str | int, ...] = ("tenants", tenant_name, "webhooks", name)
            scheme, sep, rest = endpoint.url.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "#" in rest:
                fail((*path, "url"), f"give an absolute http(s) URL, not {endpoint.url!r}")
            prefix, _, encoded = endpoint.secret.partition("whsec_")
            try:
                raw = base64.b64decode(encoded, validate=True) if not prefix else b""
            except binascii.Error:
                raw = b""
            if not 24 <= len(raw) <= 64:
                fail(
                    (*path, "secret"),
                    "give 'whsec_' + base64 of 24-64 random bytes (gateway webhooks secret)",
                )
            for i, kind in enumerate(endpoint.events):
                if kind not in WEBHOOK_EVENT_TYPES:
                    fail(
                        (*path, "events", i),
                        f"unknown event type {kind!r}; one of {', '.join(WEBHOOK_EVENT_TYPES)}",
                    )


def _check_routing(config: Config, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    routing = config.routing
    for key in ("send_timeout", "breaker.window", "breaker.cooldown"):
        section, _, attr = key.rpartition(".")
        value = getattr(routing.breaker if section else routing, attr)
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            fail(("routing", *key.split(".")), str(e))
        if seconds <= 0:
            fail(("routing", *key.split(".")), "must be longer than 0s")
    breaker = routing.breaker
    if breaker.failures < 1:
        fail(("routing", "breaker", "failures"), "must be at least 1")
    if not 0 < breaker.error_rate <= 1:
        fail(("routing", "breaker", "error_rate"), "must be more than 0 and at most 1")
    if breaker.min_sends < 1:
        fail(("routing", "breaker", "min_sends"), "must be at least 1")
    if breaker.probes < 1:
        fail(("routing", "breaker", "probes"), "must be at least 1")
    for name, limit in routing.limits.items():
        if name not in config.providers:
            fail(("routing", "limits", name), f"no provider named {name!r} in [providers]")
        for key in ("per_second", "per_minute", "per_hour", "per_day"):
            if getattr(limit, key) < 0:
                fail(("routing", "limits", name, key), "must be 0 (no limit) or more")
    if not 0 < routing.dns_port <= 65535:
        fail(("routing", "dns_port"), "must be between 1 and 65535")
    _check_nameservers(("routing", "nameservers"), routing.nameservers, fail)
    names: set[str] = set()
    for i, route in enumerate(config.routes):
        path: tuple[str | int, ...] = ("routes", i)
        if route.name in names:
            fail((*path, "name"), f"duplicate route name {route.name!r}")
        names.add(route.name)
        if not route.providers:
            fail((*path, "providers"), "name at least one provider")
        for j, provider in enumerate(route.providers):
            if provider not in config.providers:
                fail((*path, "providers", j), f"no provider named {provider!r} in [providers]")
        if len(set(route.providers)) != len(route.providers):
            fail((*path, "providers"), "a provider is listed twice")
        if route.strategy == "weighted":
            if len(route.weights) != len(route.providers):
                fail((*path, "weights"), "give one weight per provider")
            if any(w < 1 for w in route.weights):
                fail((*path, "weights"), "weights must be at least 1")
        elif route.weights:
            fail((*path, "weights"), 'only used with strategy = "weighted"')
        for j, tenant in enumerate(route.tenants):
            if tenant not in config.tenants:
                fail((*path, "tenants", j), f"no tenant named {tenant!r} in [tenants]")
        for key in ("sending_domains", "recipient_domains", "mx_hosts"):
            for j, pattern in enumerate(getattr(route, key)):
                if not _DOMAIN.match(pattern.removeprefix("*.")):
                    fail((*path, key, j), f"not a domain or *.domain pattern: {pattern!r}")


def _check_mx_provider(
    name: str, section: MxProviderSection, fail: Callable[[tuple[str | int, ...], str], None]
) -> None:
    path = ("providers", name)
    for key in ("dns_port", "port", "mta_sts_port"):
        if not 0 < getattr(section, key) <= 65535:
            fail((*path, key), "must be between 1 and 65535")
    if section.timeout <= 0:
        fail((*path, "timeout"), "must be more than 0")
    if section.connections_per_domain < 1:
        fail((*path, "connections_per_domain"), "must be at least 1")
    if section.idle_connections < 0:
        fail((*path, "idle_connections"), "must be 0 or more")
    _check_nameservers((*path, "nameservers"), section.nameservers, fail)
    if section.ca_file and not os.access(section.ca_file, os.R_OK):
        fail((*path, "ca_file"), f"cannot read {section.ca_file!r}")
    if section.source_address:
        try:
            ipaddress.ip_address(section.source_address)
        except ValueError:
            fail((*path, "source_address"), f"not an IP address: {section.source_address!r}")


def _check_nameservers(
    path: tuple[str | int, ...],
    nameservers: list[str],
    fail: Callable[[tuple[str | int, ...], str], None],
) -> None:
    for i, server in enumerate(nameservers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            fail((*path, i), f"not an IP address: {server!r}")


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
            if not _DNS_NAME.match(host):
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


def _check_feedback(config: Config, fail: Callable[[tuple[str | int, ...], str], None]) -> None:
    """``[provider_webhooks]`` and ``[bounces]``."""
    from gateway.tokens import KEY_ID, MIN_SECRET_BYTES

    hooks = config.provider_webhooks
    durations: list[tuple[tuple[str | int, ...], str]] = [
        (("provider_webhooks", "dedup_window"), hooks.dedup_window)
    ]
    for name in ("ses", "sendgrid", "mailgun"):
        section = getattr(hooks, name)
        if section is not None:
            durations.append((("provider_webhooks", name, "max_age"), section.max_age))
    for path, value in durations:
        try:
            parse_duration(value)
        except ValueError as e:
            fail(path, str(e))
    if hooks.ses is not None:
        for key in ("cert_host_pattern", "subscribe_host_pattern"):
            try:
                re.compile(getattr(hooks.ses, key))
            except re.error as e:
                fail(("provider_webhooks", "ses", key), f"not a regular expression: {e}")
        if hooks.ses.ca_file and not os.access(hooks.ses.ca_file, os.R_OK):
            fail(("provider_webhooks", "ses", "ca_file"), f"cannot read {hooks.ses.ca_file!r}")
    if hooks.sendgrid is not None:
        from gateway.webhook_auth import load_sendgrid_key

        try:
            load_sendgrid_key(hooks.sendgrid.public_key)
        except ValueError as e:
            fail(("provider_webhooks", "sendgrid", "public_key"), str(e))
    if hooks.mailgun is not None and not hooks.mailgun.signing_key:
        fail(("provider_webhooks", "mailgun", "signing_key"), "must not be empty")
    postmark = hooks.postmark
    if postmark is not None:
        if not (postmark.username and postmark.password) and not (
            postmark.secret_header and postmark.secret
        ):
            fail(
                ("provider_webhooks", "postmark"),
                "set username and password (basic auth), or secret_header and secret",
            )
    bounces = config.bounces
    if bounces.domain:
        if not _DOMAIN.match(bounces.domain):
            fail(("bounces", "domain"), f"not a domain: {bounces.domain!r}")
        if not bounces.keys:
            fail(("bounces", "keys"), "VERP return paths need at least one signing key")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,20}", bounces.local_part):
        fail(("bounces", "local_part"), "1-20 letters, digits, '.', '_' or '-'")
    for key_id, secret in bounces.keys.items():
        if not KEY_ID.match(key_id):
            fail(("bounces", "keys", key_id), "a key id is 1-16 letters, digits, '-' or '_'")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            fail(("bounces", "keys", key_id), f"a secret needs at least {MIN_SECRET_BYTES} bytes")
    if bounces.signing_key and bounces.signing_key not in bounces.keys:
        fail(("bounces", "signing_key"), f"no key {bounces.signing_key!r} in bounces.keys")
    if not 0 <= bounces.port <= 65535:
        fail(("bounces", "port"), "must be between 0 and 65535")


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
    if store.retention != "forever":
        try:
            retention = parse_duration(store.retention)
        except ValueError as e:
            fail(("store", "retention"), f"{e}, or 'forever'")
        else:
            if retention < 86400:
                fail(
                    ("store", "retention"),
                    "must be at least 1d (idempotency keys answer for 24 h) or 'forever'",
                )
    if store.backend != "redis":
        return
    from gateway.store.redis_client import parse_redis_url

    try:
        parse_redis_url(store.url)
    except ValueError as e:
        fail(("store", "url"), str(e))
    if not store.prefix or any(c in store.prefix for c in "{}"):
        fail(("store", "prefix"), "must be non-empty and without braces")
    if store.min_replicas < 0:
        fail(("store", "min_replicas"), "must be 0 or more")
    elif store.min_replicas and store.url.split("://", 1)[0].endswith("+cluster"):
        fail(("store", "min_replicas"), "is not supported with Redis Cluster (use Sentinel)")
    try:
        if parse_duration(store.replica_timeout) <= 0:
            fail(("store", "replica_timeout"), "must be above 0s")
    except ValueError as e:
        fail(("store", "replica_timeout"), str(e))
    try:
        lease = parse_duration(store.lease)
    except ValueError as e:
        fail(("store", "lease"), str(e))
    else:
        if lease < 3:
            fail(("store", "lease"), "must be at least 3s (it is renewed every third of it)")


_LISTENER_LIMITS = (
    "max_sessions",
    "max_sessions_per_client",
    "max_session_time",
    "max_junk_commands",
    "tls_handshake_timeout",
)


def _check_listener_limits(
    listener: ListenerSection,
    path: tuple[str | int, ...],
    fail: Callable[[tuple[str | int, ...], str], None],
) -> None:
    for key in _LISTENER_LIMITS:
        if getattr(listener, key) <= 0:
            fail((*path, key), "must be more than 0")
    if listener.max_connections_per_minute < 0:
        fail((*path, "max_connections_per_minute"), "must be 0 (no limit) or more")
    if not 1 <= listener.ipv6_prefix <= 128:
        fail((*path, "ipv6_prefix"), "must be between 1 and 128")


def _check_smtp_auth(
    auth: SmtpAuthSection, fail: Callable[[tuple[str | int, ...], str], None]
) -> None:
    for key in auth.__struct_fields__:
        value = getattr(auth, key)
        if value < 0 or (value == 0 and key not in ("failure_delay", "max_failure_delay")):
            fail(("smtp", "auth", key), "must be more than 0")


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def store_location(config: Config) -> str:
    if config.store.backend != "redis":
        return str(config.spool_dir)
    from gateway.store.redis_client import parse_redis_url

    return f"{parse_redis_url(config.store.url).redacted} (prefix {config.store.prefix})"


def summarize(config: Config) -> str:
    """The short human summary printed by ``gateway check-config``."""
    lines = [
        f"hostname      {config.gateway.hostname}",
        f"workers       {config.gateway.workers}",
        f"store         {config.store.backend} at {store_location(config)}",
    ]
    for listener in config.smtp.listeners:
        auth = "AUTH without TLS allowed" if listener.insecure_auth else "AUTH over TLS only"
        tls_required = ", TLS required" if listener.requires_tls() else ""
        lines.append(
            f"smtp listener {listener.name}: {listener.address}:{listener.port} "
            f"tls={listener.tls}{tls_required}, {auth}, at most {listener.max_sessions} "
            f"sessions ({listener.max_sessions_per_client} per client)"
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
        if isinstance(provider, SmtpProviderSection):
            where = f"{provider.host}:{provider.port} tls={provider.tls}"
        elif isinstance(provider, MxProviderSection):
            where = f"MX hosts of each recipient domain, starttls={provider.starttls}"
        elif isinstance(provider, SesProviderSection):
            where = provider.endpoint or f"SES API v2 in {provider.region}"
        elif isinstance(provider, MailgunProviderSection):
            where = f"{provider.base_url or provider.region.upper() + ' API'}, {provider.domain}"
        elif isinstance(provider, SendgridProviderSection | PostmarkProviderSection):
            where = provider.base_url
        else:
            where = "local outbox"
        lines.append(f"provider      {name} ({type(provider).__struct_config__.tag}): {where}")
    for name, domain in config.domains.items():
        warming = (
            f"warming {domain.warming_schedule} from {domain.warming_start}"
            if domain.warming_schedule
            else "established"
        )
        pool = f", pool {domain.pool}" if domain.pool else ""
        lines.append(f"domain        {name}: {warming}{pool}")
    for name, ip in config.ips.items():
        warming = (
            f"warming {ip.warming_schedule} from {ip.warming_start}"
            if ip.warming_schedule
            else "established"
        )
        pool = f", pool {ip.pool}" if ip.pool else ""
        lines.append(f"ip            {name} via {ip.provider}: {warming}{pool}")
    d = config.delivery
    lines.append(
        f"delivery      via {' → '.join(d.providers)}, concurrency {d.concurrency}, "
        f"retries {', '.join(d.retry_schedule)} for up to {d.max_lifetime}, "
        f"DSN {'on' if d.dsn else 'off'}"
    )
    for route in config.routes:
        lines.append(
            f"route         {route.name}: {route.strategy} over {', '.join(route.providers)}"
            f"{'' if route.failover else ', no failover'}"
        )
    hooks = config.provider_webhooks
    on = [name for name in ("ses", "sendgrid", "mailgun", "postmark") if getattr(hooks, name)]
    lines.append(f"webhooks      {', '.join(f'/webhooks/{n}' for n in on) or 'none'}")
    b = config.bounces
    lines.append(
        f"bounces       VERP via {b.local_part}+…@{b.domain}, listener "
        + (f"{b.address}:{b.port}" if b.listen else "off")
        if b.domain
        else "bounces       VERP off (no bounces.domain)"
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
