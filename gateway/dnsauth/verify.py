"""Checking a sending domain's DNS: each record found / missing / wrong / could not check,
with the value seen and the value expected; the domain's verdict; the readiness report.

A domain is ``verified`` only when SPF, DKIM (every signing selector) and DMARC pass. A lookup
that timed out or failed (SERVFAIL) makes a record ``could_not_check``, never ``missing``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

import dns.reversename
import msgspec

from gateway.config import Config
from gateway.dkim_keys import DkimKey
from gateway.dnsauth import dmarc, spf
from gateway.dnsauth.lookup import Answer, Lookup
from gateway.dnsauth.records import (
    DnsRecord,
    domain_section,
    expected_records,
    mta_sts_policy,
    sending_ips,
)
from gateway.mta_sts import PolicyError, parse_policy

RecordStatus = Literal["found", "missing", "wrong", "could_not_check"]
DomainStatus = Literal["verified", "unverified", "could_not_check"]
CheckStatus = Literal["pass", "fail", "could_not_check", "not_applicable"]

SPF_PROBE = "0.0.0.0"
"""An address no record authorizes: evaluating it walks every term of an SPF record, so each
include is reached and every lookup counted."""


class RecordCheck(msgspec.Struct, kw_only=True):
    purpose: str
    name: str
    type: str
    expected: str
    status: RecordStatus
    seen: list[str] = msgspec.field(default_factory=list)
    detail: str = ""
    required: bool = False
    selector: str = ""


class ReadinessCheck(msgspec.Struct, kw_only=True):
    name: str
    status: CheckStatus
    detail: str = ""


class DomainReport(msgspec.Struct, kw_only=True):
    domain: str
    status: DomainStatus
    checked_at: float
    records: list[RecordCheck]
    readiness: list[ReadinessCheck] = msgspec.field(default_factory=list)


def _could_not(record: DnsRecord, answer: Answer) -> RecordCheck:
    return _check(record, "could_not_check", detail=f"could not check: {answer.error}")


def _check(
    record: DnsRecord, status: RecordStatus, seen: Sequence[str] = (), detail: str = ""
) -> RecordCheck:
    return RecordCheck(
        purpose=record.purpose,
        name=record.name,
        type=record.type,
        expected=record.value,
        status=status,
        seen=list(seen),
        detail=detail,
        required=record.required,
        selector=record.selector,
    )


async def check_spf(lookup: Lookup, config: Config, domain: str, record: DnsRecord) -> RecordCheck:
    answer = await lookup.txt(record.name)
    if answer.status == "error":
        return _could_not(record, answer)
    seen = spf.spf_records(answer)
    if not seen:
        return _check(record, "missing", list(answer.values), "no v=spf1 TXT record")
    probe = await spf.evaluate(lookup, record.name, SPF_PROBE)
    if probe.result == "temperror":
        return _check(record, "could_not_check", seen, f"could not check: {probe.reason}")
    if probe.result == "permerror":
        return _check(record, "wrong", seen, f"permerror: {probe.reason}")
    section = domain_section(config, domain)
    included = {d.lower() for d in probe.includes}
    problems = [
        f"include:{d} is not reached" for d in section.spf_include if d.lower() not in included
    ]
    addresses = sending_ips(config, section)
    results = await asyncio.gather(
        *(
            spf.evaluate(lookup, record.name, str(ipaddress.ip_network(a, strict=False)[0]))
            for a in addresses
        )
    )
    verdicts = []
    for address, result in zip(addresses, results, strict=True):
        if result.result == "temperror":
            return _check(record, "could_not_check", seen, f"could not check: {result.reason}")
        reason = f" ({result.reason})" if result.reason else ""
        verdicts.append(f"{address} {result.result}{reason}")
        if result.result != "pass":
            problems.append(f"{address} must pass")
    # What a receiver's SPF check gives each address the domain sends from.
    parts = [*problems, "RFC 7208 check_host(): " + ", ".join(verdicts)] if verdicts else problems
    detail = "; ".join([*parts, f"{probe.lookups} of {spf.LOOKUP_LIMIT} DNS lookups"])
    return _check(record, "wrong" if problems else "found", seen, detail)


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


async def check_dkim(lookup: Lookup, record: DnsRecord) -> RecordCheck:
    answer = await lookup.txt(record.name)
    if answer.status == "error":
        return _could_not(record, answer)
    if answer.absent or not answer.values:
        return _check(record, "missing", detail=f"no TXT record at {record.name}")
    expected = _tags(record.value)
    for value in answer.values:
        tags = _tags(value)
        if tags.get("v", "DKIM1") != "DKIM1":
            continue
        if tags.get("k", "rsa") != expected["k"]:
            return _check(
                record, "wrong", answer.values, f"k={tags.get('k')}, ours is {expected['k']}"
            )
        if not tags.get("p"):
            return _check(record, "wrong", answer.values, "p= is empty: the key is revoked")
        try:
            published = base64.b64decode(tags["p"], validate=True)
        except ValueError:
            return _check(record, "wrong", answer.values, "p= is not valid base64")
        if published != base64.b64decode(expected["p"]):
            return _check(
                record, "wrong", answer.values, "a different public key than our private key's"
            )
        return _check(record, "found", answer.values)
    return _check(record, "wrong", answer.values, "no v=DKIM1 record")


async def check_dmarc(
    lookup: Lookup,
    config: Config,
    domain: str,
    record: DnsRecord,
    dkim_domains: Sequence[str] = (),
) -> RecordCheck:
    """The DMARC record at the domain (or its organizational domain) and whether DMARC can
    pass: it does when SPF *or* DKIM aligns (RFC 7489 §4.2). ``dkim_domains`` are the
    ``d=`` domains the gateway signs this domain's mail with."""
    names = [record.name]
    org = dmarc.organizational_domain(domain)
    if org != domain:
        names.append(f"_dmarc.{org}")
    for name in names:
        answer = await lookup.txt(name)
        if answer.status == "error":
            return _could_not(record, answer)
        found = [v for v in answer.values if v.replace(" ", "").upper().startswith("V=DMARC1")]
        if not found:
            continue
        where = "" if name == record.name else f" (the organizational domain's, at {name})"
        if len(found) > 1:
            return _check(record, "wrong", found, f"{len(found)} DMARC records{where}")
        try:
            parsed = dmarc.parse_dmarc(found[0])
        except dmarc.DmarcError as e:
            return _check(record, "wrong", found, f"malformed{where}: {e}")
        section = domain_section(config, domain)
        return_path = section.return_path or domain
        spf_aligns = dmarc.aligned(return_path, domain, parsed.aspf)
        dkim_aligned = [d for d in dkim_domains if dmarc.aligned(d, domain, parsed.adkim)]
        spf_note = (
            f"SPF aligns (Return-Path {return_path})"
            if spf_aligns
            else f"SPF does not align (aspf={parsed.aspf}: the Return-Path domain "
            f"{return_path} is not {domain})"
        )
        dkim_note = (
            f"DKIM aligns (d={dkim_aligned[0]})"
            if dkim_aligned
            else f"DKIM does not align (adkim={parsed.adkim}: no key signs with d={domain})"
        )
        if not spf_aligns and not dkim_aligned:
            return _check(
                record, "wrong", found, f"neither aligns with {domain}: {spf_note}; {dkim_note}"
            )
        notes = [f"p={parsed.policy}{where}; DMARC can pass: {spf_note}; {dkim_note}"]
        if parsed.policy == "none":
            notes.append("p=none only monitors: move to quarantine/reject once reports are clean")
        if not parsed.rua:
            notes.append("no rua=: you will get no aggregate reports")
        return _check(record, "found", found, "; ".join(notes))
    return _check(record, "missing", detail=f"no v=DMARC1 TXT record at {record.name}")


_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


PolicyFetcher = Callable[[str], Awaitable[str]]
"""``domain`` → the text ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` serves
(``MtaSts.fetch``); raises ``PolicyError`` when it serves none."""


async def check_mta_sts(
    lookup: Lookup, record: DnsRecord, ours: str, fetch: PolicyFetcher | None = None
) -> RecordCheck:
    """``_mta-sts`` TXT: exactly one ``v=STSv1`` record with a valid ``id`` (RFC 8461 §3.1).
    Any valid id is right — senders only compare it with the one they cached; ours is a
    suggestion that changes with the policy. With ``fetch``, the policy the domain serves is
    fetched too and compared, field by field, with ``ours`` (what the gateway serves)."""
    answer = await lookup.txt(record.name)
    if answer.status == "error":
        return _could_not(record, answer)
    found = [v for v in answer.values if v.replace(" ", "").startswith("v=STSv1")]
    if not found:
        return _check(record, "missing", answer.values, "no v=STSv1 record")
    if len(found) > 1:
        return _check(record, "wrong", found, f"{len(found)} v=STSv1 records: senders ignore all")
    policy_id = _tags(found[0]).get("id", "")
    if not _STS_ID.match(policy_id):
        return _check(record, "wrong", found, f"id={policy_id!r}: 1-32 letters and digits")
    expected = _tags(record.value)["id"]
    notes = []
    if policy_id != expected:
        notes.append(
            f"id={policy_id} (ours would be {expected}): change it whenever the policy changes"
        )
    if fetch is not None:
        domain = record.name.removeprefix("_mta-sts.")
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        try:
            served = parse_policy(await fetch(domain), policy_id)
        except PolicyError as e:
            return _check(record, "wrong", found, f"the policy at {url} is unusable: {e}")
        wanted = parse_policy(ours, policy_id)
        differences = []
        if served.mode != wanted.mode:
            differences.append(f"mode {served.mode}, ours {wanted.mode}")
        if sorted(served.mx) != sorted(wanted.mx):
            differences.append(f"mx {', '.join(served.mx)}; ours {', '.join(wanted.mx)}")
        if served.max_age != wanted.max_age:
            differences.append(f"max_age {served.max_age}, ours {wanted.max_age}")
        if differences:
            detail = f"the policy served at {url} differs from ours: " + "; ".join(differences)
            return _check(record, "wrong", found, "; ".join([detail, *notes]))
        notes.append(f"the policy served at {url} is ours")
    return _check(record, "found", found, "; ".join(notes))


async def check_plain(lookup: Lookup, record: DnsRecord) -> RecordCheck:
    """MX, CNAME and the MTA-STS / TLS-RPT TXT records: compared as values."""
    answer = await lookup.query(record.name, record.type)
    if answer.status == "error":
        return _could_not(record, answer)
    if answer.absent:
        return _check(record, "missing", detail=f"no {record.type} record at {record.name}")
    if record.type == "TXT":
        prefix = record.value.split(";")[0]
        relevant = [v for v in answer.values if v.replace(" ", "").startswith(prefix)]
        if not relevant:
            return _check(record, "missing", answer.values, f"no {prefix} record")
        if _tags(relevant[0]) != _tags(record.value):
            return _check(record, "wrong", relevant, "differs from the expected value")
        return _check(record, "found", relevant)
    if record.type == "MX":
        hosts = {v.split()[-1].lower() for v in answer.values}
        ok = record.value.split()[-1].lower().rstrip(".") in hosts
    else:
        ok = record.value.lower().rstrip(".") in {v.lower() for v in answer.values}
    return _check(record, "found" if ok else "wrong", answer.values)


async def check_record(
    lookup: Lookup,
    config: Config,
    domain: str,
    record: DnsRecord,
    dkim_domains: Sequence[str] = (),
    fetch_policy: PolicyFetcher | None = None,
) -> RecordCheck:
    if record.purpose == "spf" or (record.purpose == "return_path" and record.type == "TXT"):
        return await check_spf(lookup, config, domain, record)
    if record.purpose == "dkim":
        return await check_dkim(lookup, record)
    if record.purpose == "dmarc":
        return await check_dmarc(lookup, config, domain, record, dkim_domains)
    if record.purpose == "mta_sts":
        ours = mta_sts_policy(domain_section(config, domain))
        return await check_mta_sts(lookup, record, ours, fetch_policy)
    return await check_plain(lookup, record)


def domain_status(checks: Sequence[RecordCheck], keys_signing: bool) -> DomainStatus:
    required = [c for c in checks if c.required]
    if not keys_signing or any(c.status in ("missing", "wrong") for c in required):
        return "unverified"
    if any(c.status == "could_not_check" for c in required):
        return "could_not_check"
    return "verified"


async def verify_domain(
    lookup: Lookup,
    config: Config,
    domain: str,
    keys: Sequence[DkimKey],
    now: float,
    *,
    fetch_policy: PolicyFetcher | None = None,
) -> DomainReport:
    """Check every record ``domain`` should publish, concurrently, and the readiness list.

    With ``fetch_policy``, the MTA-STS policy the domain serves is compared with ours."""
    domain = domain.lower().rstrip(".")
    records = expected_records(config, domain, keys)
    signing = any(k.domain == domain and k.state == "signing" for k in keys)
    dkim_domains = [k.domain for k in keys if k.state == "signing"]
    checks = list(
        await asyncio.gather(
            *(check_record(lookup, config, domain, r, dkim_domains, fetch_policy) for r in records)
        )
    )
    if not signing:
        checks.insert(
            1,
            RecordCheck(
                purpose="dkim",
                name=f"<selector>._domainkey.{domain}",
                type="TXT",
                expected="",
                status="missing",
                detail=f"no DKIM key signs for {domain}: run `gateway dkim keygen {domain} "
                "--selector NAME`",
                required=True,
            ),
        )
    report = DomainReport(
        domain=domain,
        status=domain_status(checks, signing),
        checked_at=now,
        records=checks,
    )
    report.readiness = await readiness(lookup, config, domain, checks)
    return report


def _from_checks(checks: Sequence[RecordCheck], purpose: str) -> CheckStatus:
    relevant = [c for c in checks if c.purpose == purpose and c.required]
    if not relevant or any(c.status in ("missing", "wrong") for c in relevant):
        return "fail"
    if any(c.status == "could_not_check" for c in relevant):
        return "could_not_check"
    return "pass"


def _plugin_enabled(config: Config, name: str) -> bool:
    table = config.plugins.get(name)
    return table is not None and table.get("enabled", True) is not False


async def readiness(
    lookup: Lookup, config: Config, domain: str, checks: Sequence[RecordCheck]
) -> list[ReadinessCheck]:
    """Gmail's and Yahoo's bulk-sender requirements (2024), one line each."""
    spf_status = _from_checks(checks, "spf")
    dkim_status = _from_checks(checks, "dkim")
    dmarc_status = _from_checks(checks, "dmarc")
    dmarc_check = next(c for c in checks if c.purpose == "dmarc")
    signing = _plugin_enabled(config, "dkim")
    report = [
        ReadinessCheck(name="spf_pass", status=spf_status),
        ReadinessCheck(
            name="dkim_pass",
            status=dkim_status if signing or dkim_status != "pass" else "fail",
            detail="" if signing else "[plugins.dkim] is not enabled: mail is not signed",
        ),
        ReadinessCheck(name="dmarc_published", status=dmarc_status, detail=dmarc_check.detail),
        ReadinessCheck(
            name="alignment",
            status=dmarc_status
            if dmarc_status != "fail" or dmarc_check.status != "wrong"
            else "fail",
            detail=dmarc_check.detail.partition("DMARC can pass: ")[2]
            if dmarc_status == "pass"
            else dmarc_check.detail,
        ),
    ]
    unsubscribe = _plugin_enabled(config, "list_unsubscribe")
    report.append(
        ReadinessCheck(
            name="one_click_unsubscribe",
            status="pass" if unsubscribe else "fail",
            detail="List-Unsubscribe + List-Unsubscribe-Post on bulk mail (RFC 8058)"
            if unsubscribe
            else "enable [plugins.list_unsubscribe] for bulk mail",
        )
    )
    report.append(await check_from_mx(lookup, domain))
    section = domain_section(config, domain)
    dedicated = [ip for ip, s in config.ips.items() if not section.pool or s.pool == section.pool]
    report.append(await check_ptr(lookup, dedicated))
    return report


async def check_from_mx(lookup: Lookup, domain: str) -> ReadinessCheck:
    """The From domain must receive mail (replies, DSNs; receivers check it): a null MX
    (RFC 7505 §4.4) or no domain at all fails."""
    name = "from_domain_mx"
    answer = await lookup.query(domain, "MX")
    if answer.status == "error":
        return ReadinessCheck(name=name, status="could_not_check", detail=answer.error)
    if answer.status == "nxdomain":
        return ReadinessCheck(name=name, status="fail", detail=f"{domain} does not exist")
    if any(v.split()[-1] in ("", ".") or v.split() == ["0"] for v in answer.values):
        return ReadinessCheck(
            name=name,
            status="fail",
            detail=f"{domain} publishes a null MX (RFC 7505): it receives no mail, so it must "
            "not be a From or Return-Path domain",
        )
    if not answer.values:
        return ReadinessCheck(
            name=name, status="pass", detail="no MX: mail goes to the domain's address records"
        )
    return ReadinessCheck(name=name, status="pass", detail=", ".join(answer.values))


async def check_ptr(lookup: Lookup, addresses: Sequence[str]) -> ReadinessCheck:
    """Forward-confirmed reverse DNS for each dedicated IP."""
    ips = [a for a in addresses if ipaddress.ip_network(a, strict=False).num_addresses == 1]
    if not ips:
        return ReadinessCheck(name="ptr", status="not_applicable", detail="no dedicated IPs")
    problems, unknown = [], []
    for ip in ips:
        address = str(ipaddress.ip_network(ip, strict=False).network_address)
        answer = await lookup.query(dns.reversename.from_address(address).to_text(), "PTR")
        if answer.status == "error":
            unknown.append(answer.error)
            continue
        if not answer.values:
            problems.append(f"{address} has no PTR record")
            continue
        host = answer.values[0]
        rdtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        forward = await lookup.query(host, rdtype)
        if forward.status == "error":
            unknown.append(forward.error)
        elif address not in forward.values:
            problems.append(f"{address} → {host}, which does not resolve back to it")
    if problems:
        return ReadinessCheck(name="ptr", status="fail", detail="; ".join(problems))
    if unknown:
        return ReadinessCheck(
            name="ptr", status="could_not_check", detail="could not check: " + "; ".join(unknown)
        )
    return ReadinessCheck(name="ptr", status="pass", detail=f"{len(ips)} IP(s) forward-confirmed")
