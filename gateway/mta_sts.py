"""MTA-STS (RFC 8461): a domain's promise that its MX hosts take mail only over valid TLS.

Discovery is a TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=…``); the policy itself is
fetched over HTTPS, with certificate validation and without redirects, from
``https://mta-sts.<domain>/.well-known/mta-sts.txt``. Policies are cached for their
``max_age`` and fetched again when the TXT ``id`` changes. When no policy can be had and none
is cached, mail goes out as if the domain had none (section 5), as the RFC says.

The HTTPS connection resolves ``mta-sts.<domain>`` through the gateway's own resolver (a
small httpcore network backend), so tests can serve the policy from loopback.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, Literal, NamedTuple

import httpcore

from gateway.clock import Clock
from gateway.mx_lookup import DnsResolver, LookupFailed

log = logging.getLogger("gateway.mta_sts")

MAX_POLICY_BYTES = 64 * 1024
"""Section 3.3: senders may refuse larger policy bodies."""


class Policy(NamedTuple):
    mode: Literal["enforce", "testing", "none"]
    mx: tuple[str, ...]
    max_age: int
    id: str

    def allows(self, host: str) -> bool:
        """Whether MX ``host`` matches one of the policy's ``mx`` patterns (section 4.1: a
        leading ``*.`` stands for exactly one label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, rest = host.partition(".")
                if dot and first and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


class PolicyError(Exception):
    """The policy could not be fetched or parsed."""


def parse_policy(text: str, policy_id: str) -> Policy:
    """Section 3.2's key/value lines; unknown keys are ignored, required ones checked."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"unknown mode {mode!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError("max_age is not a number") from None
    mx = tuple(p.lower().rstrip(".") for p in fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return Policy(mode, mx, min(max_age, 31_557_600), policy_id)  # type: ignore[arg-type]


def txt_policy_id(records: list[str]) -> str | None:
    """The ``id`` of the one ``v=STSv1`` record, or ``None`` (section 3.1: several records,
    or none, mean no policy)."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;")]
    if len(found) != 1:
        return None
    for part in found[0].split(";"):
        key, _, value = part.strip().partition("=")
        if key == "id" and value:
            return value
    return None


class _ResolvingBackend(httpcore.AsyncNetworkBackend):
    """Connects to the address our resolver gives; TLS still checks the original name."""

    def __init__(self, resolver: DnsResolver) -> None:
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore.AsyncNetworkBackend signature)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._resolver.addresses(host)
        except LookupFailed as e:
            raise httpcore.ConnectError(str(e)) from None
        if not addresses:
            raise httpcore.ConnectError(f"{host}: no address")
        return await self._inner.connect_tcp(
            addresses[0], port, timeout, local_address, socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class MtaSts:
    """Policy look-up with a cache, for the ``mx`` provider."""

    def __init__(
        self,
        resolver: DnsResolver,
        clock: Clock,
        *,
        port: int = 443,
        ca_file: str = "",
        timeout: float = 30.0,
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.port = port
        self.timeout = timeout
        context = ssl.create_default_context(cafile=ca_file or None)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, network_backend=_ResolvingBackend(resolver), retries=0
        )
        self._cache: dict[str, tuple[Policy, float]] = {}

    async def close(self) -> None:
        await self._pool.aclose()

    async def policy(self, domain: str) -> Policy | None:
        """The domain's policy in force, or ``None`` when it has none we can use."""
        now = self.clock.now()
        cached = self._cache.get(domain)
        if cached is not None and cached[1] <= now:
            del self._cache[domain]
            cached = None
        try:
            policy_id = txt_policy_id(await self.resolver.txt(f"_mta-sts.{domain}"))
        except LookupFailed as e:
            log.info("MTA-STS discovery for %s failed: %s", domain, e)
            policy_id = None
        if policy_id is None or (cached is not None and cached[0].id == policy_id):
            return cached[0] if cached is not None else None
        try:
            policy = parse_policy(await self.fetch(domain), policy_id)
        except PolicyError as e:
            log.warning("MTA-STS policy of %s unusable: %s", domain, e)
            return cached[0] if cached is not None else None
        self._cache[domain] = (policy, now + policy.max_age)
        return policy

    async def fetch(self, domain: str) -> str:
        """The policy text ``mta-sts.<domain>`` serves; ``PolicyError`` when it serves none."""
        url = f"https://mta-sts.{domain}:{self.port}/.well-known/mta-sts.txt"
        timeouts = {"connect": self.timeout, "read": self.timeout, "write": self.timeout}
        try:
            async with self._pool.stream(
                "GET", url, headers={"Host": f"mta-sts.{domain}"}, extensions={"timeout": timeouts}
            ) as response:
                if response.status != 200:  # redirects are not followed (section 3.3)
                    raise PolicyError(f"{url}: HTTP {response.status}")
                content_type = dict(response.headers).get(b"Content-Type", b"")
                if not content_type.lower().startswith(b"text/plain"):
                    raise PolicyError(f"{url}: Content-Type {content_type.decode()!r}")
                body = b""
                async for chunk in response.aiter_stream():
                    body += chunk
                    if len(body) > MAX_POLICY_BYTES:
                        raise PolicyError(f"{url}: policy larger than 64 KiB")
        except httpcore.TimeoutException as e:
            raise PolicyError(f"{url}: timed out: {e!r}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as e:
            raise PolicyError(f"{url}: {e!r}") from None
        return body.decode("utf-8", "replace")
