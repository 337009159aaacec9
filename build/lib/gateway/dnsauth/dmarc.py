"""DMARC records (RFC 7489 6.3) parsed strictly, and identifier alignment (3.1)."""

from __future__ import annotations

from typing import Literal

import msgspec

Policy = Literal["none", "quarantine", "reject"]


class DmarcError(ValueError):
    """The record is malformed; the message says which tag and why."""


class DmarcRecord(msgspec.Struct, kw_only=True, frozen=True):
    policy: Policy
    subdomain_policy: Policy
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()


_POLICIES = ("none", "quarantine", "reject")


def parse_dmarc(text: str) -> DmarcRecord:
    """Parse a ``v=DMARC1`` record; ``DmarcError`` names what is wrong."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.strip().split(";")]
    if parts and parts[-1] == "":
        parts.pop()
    for i, part in enumerate(parts):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            raise DmarcError(f"{part!r} is not a tag=value pair")
        if i == 0 and (name != "v" or value != "DMARC1"):
            raise DmarcError("the record must start with v=DMARC1")
        if name in tags:
            raise DmarcError(f"tag {name} appears twice")
        tags[name] = value
    if "v" not in tags:
        raise DmarcError("the record must start with v=DMARC1")
    policy = tags.get("p")
    if policy is None:
        raise DmarcError("p= (the policy) is required")
    if policy.lower() not in _POLICIES:
        raise DmarcError(f"p={policy}: give none, quarantine or reject")
    subdomain = tags.get("sp", policy).lower()
    if subdomain not in _POLICIES:
        raise DmarcError(f"sp={subdomain}: give none, quarantine or reject")
    modes = {}
    for tag in ("adkim", "aspf"):
        mode = tags.get(tag, "r").lower()
        if mode not in ("r", "s"):
            raise DmarcError(f"{tag}={mode}: give r (relaxed) or s (strict)")
        modes[tag] = mode
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or not 0 <= int(pct_text) <= 100:
        raise DmarcError(f"pct={pct_text}: give a whole number from 0 to 100")
    rua = tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip())
    for uri in rua:
        if not uri.lower().startswith(("mailto:", "https:")):
            raise DmarcError(f"rua: {uri!r} is not a mailto: or https: URI")
    return DmarcRecord(
        policy=policy.lower(),  # type: ignore[arg-type]
        subdomain_policy=subdomain,  # type: ignore[arg-type]
        adkim=modes["adkim"],  # type: ignore[arg-type]
        aspf=modes["aspf"],  # type: ignore[arg-type]
        pct=int(pct_text),
        rua=rua,
    )


def organizational_domain(domain: str) -> str:
    """The registered domain, approximated as the last two labels (no public suffix list:
    ``example.co.uk`` needs its own ``[domains]`` entry to align exactly)."""
    labels = domain.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


def aligned(identifier: str, from_domain: str, mode: Literal["r", "s"]) -> bool:
    """Does an authenticated domain (DKIM ``d=``, SPF MAIL FROM) align with the From domain?"""
    a, b = identifier.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)
