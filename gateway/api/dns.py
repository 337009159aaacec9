"""A sending domain's DNS: ``GET /v1/domains/{domain}/dns`` (the records to publish),
``POST /v1/domains/{domain}/verify`` (look them up now), and the MTA-STS policy file at
``/.well-known/mta-sts.txt``, served to ``Host: mta-sts.<domain>``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.params import FromPath

from gateway.api.auth import requires
from gateway.api.context import ApiContext
from gateway.api.problems import Problem
from gateway.dkim_keys import configured_keys
from gateway.dnsauth.records import (
    DnsRecord,
    bind_snippet,
    domain_section,
    expected_records,
    mta_sts_policy,
)
from gateway.dnsauth.state import verify_and_save
from gateway.dnsauth.verify import DomainReport


class DomainRecords(msgspec.Struct, kw_only=True):
    domain: str
    records: list[DnsRecord]
    zone: str
    """The same records as a BIND zone-file snippet."""


def _domain(request: Request[Any, Any, Any], domain: str) -> str:
    """The domain, if the key may see it: a configured sending domain of the key's tenant
    (any configured one for an ``operator`` key). Unknown domains are never looked up in DNS."""
    api = ApiContext.of(request)
    key = request.state.api_key
    name = domain.lower().rstrip(".")
    tenant = [d.lower() for d in api.tenant(key.tenant).sending_domains]
    known = set(api.config.domains) | {
        d.lower() for t in api.config.tenants.values() for d in t.sending_domains
    }
    if name not in known or (name not in tenant and not key.allows("operator")):
        raise Problem(
            404,
            "unknown-domain",
            "Unknown domain",
            f"{name} is not a sending domain of tenant {key.tenant!r} ([domains] or "
            "sending_domains)",
            field="domain",
        )
    return name


class DnsController(Controller):
    path = "/v1/domains"
    tags = ["domains"]

    @get("/{name:str}/dns", guards=[requires("read")], summary="DNS records to publish")
    async def records(self, request: Request[Any, Any, Any], name: FromPath[str]) -> DomainRecords:
        api = ApiContext.of(request)
        domain = _domain(request, name)
        keys = configured_keys(api.config, domain)
        records = expected_records(api.config, domain, keys)
        return DomainRecords(domain=domain, records=records, zone=bind_snippet(domain, records))

    @post(
        "/{name:str}/verify",
        guards=[requires("send")],
        status_code=200,
        summary="Look the domain's records up now: found / missing / wrong / could not check",
    )
    async def verify(self, request: Request[Any, Any, Any], name: FromPath[str]) -> DomainReport:
        api = ApiContext.of(request)
        return await verify_and_save(api.config, api.store, _domain(request, name), api.clock.now())


@get("/.well-known/mta-sts.txt", summary="MTA-STS policy (RFC 8461)", include_in_schema=False)
async def mta_sts_policy_file(request: Request[Any, Any, Any]) -> Response[str]:
    api = ApiContext.of(request)
    host = request.headers.get("host", "").rpartition(":")[0] or request.headers.get("host", "")
    host = host.lower().rstrip(".")
    domain = host.removeprefix("mta-sts.")
    section = api.config.domains.get(domain) if host.startswith("mta-sts.") else None
    if section is None or not section.mta_sts_mode:
        return Response(
            f"no MTA-STS policy for host {host!r}\n", status_code=404, media_type=MediaType.TEXT
        )
    return Response(
        mta_sts_policy(domain_section(api.config, domain)),
        media_type=MediaType.TEXT,
        headers={"Cache-Control": "max-age=3600"},
    )
