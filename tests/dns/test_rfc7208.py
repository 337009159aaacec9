"""The RFC 7208 test suite (``rfc7208-tests.yml``, the openspf.org suite release 2014.04, as
pyspf ships it; licence in ``rfc7208-tests.LICENSE``), every case, through the gateway's
evaluation: pyspf in a worker thread whose DNS queries are bridged back to the event loop.

Each scenario's zone data answers as a recursive resolver would: CNAMEs are followed (a loop is
a server failure), ``TIMEOUT`` is a lookup that fails unless the name has data of the type
asked, and a missing name under ``error.`` fails too. Types SPF (99) records stand in for TXT
where a name has no TXT of its own, as the suite's header asks of its drivers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.dnsauth import spf
from gateway.dnsauth.lookup import Answer

SUITE = Path(__file__).with_name("rfc7208-tests.yml")


class Zone:
    """One scenario's ``zonedata``, answering ``query(name, rdtype)`` like ``Lookup``."""

    def __init__(self, data: dict[str, list[Any]]) -> None:
        self.names: dict[str, list[tuple[str, Any]]] = {}
        for name, entries in data.items():
            records: list[tuple[str, Any]] = []
            for entry in entries:
                if entry == "TIMEOUT":
                    records.append(("TIMEOUT", None))
                    continue
                ((rdtype, value),) = entry.items()
                records.append((rdtype, value))
            if not any(t == "TXT" for t, _ in records):
                records += [("TXT", v) for t, v in records if t == "SPF"]
            self.names[name.lower()] = [(t, v) for t, v in records if v != "NONE"]

    async def query(self, name: str, rdtype: str) -> Answer:
        seen: set[str] = set()
        name = name.rstrip(".").lower()
        while name not in seen:
            seen.add(name)
            records = self.names.get(name)
            if records is None:
                if name.startswith("error."):
                    return Answer("error", error=f"timed out looking up {rdtype} {name}")
                return Answer("nxdomain")
            values = [_text(rdtype, v) for t, v in records if t == rdtype]
            if values:
                return Answer("ok", tuple(values))
            aliases = [v for t, v in records if t == "CNAME"]
            if aliases:
                name = aliases[0].rstrip(".").lower()
                continue
            if any(t == "TIMEOUT" for t, _ in records):
                return Answer("error", error=f"timed out looking up {rdtype} {name}")
            return Answer("nodata")
        return Answer("error", error=f"{rdtype} {name}: CNAME loop")


def _text(rdtype: str, value: Any) -> str:
    """A record as ``Lookup`` gives it: TXT strings joined, names without the final dot."""
    if rdtype in ("TXT", "SPF"):
        return "".join(value) if isinstance(value, list) else str(value)
    if rdtype == "MX":
        preference, host = value
        return f"{preference} {host.rstrip('.')}"
    return str(value).rstrip(".")


def _cases() -> list[Any]:
    cases = []
    with SUITE.open("rb") as f:
        for scenario in yaml.safe_load_all(f):
            zone = Zone(scenario["zonedata"])
            for name, case in scenario["tests"].items():
                cases.append(pytest.param(zone, case, id=name))
    return cases


CASES = _cases()


def test_the_whole_suite_is_here() -> None:
    with SUITE.open("rb") as f:
        assert len(list(yaml.safe_load_all(f))) == 16
    assert len(CASES) == 203


@pytest.mark.parametrize(("zone", "case"), CASES)
async def test_rfc7208(zone: Zone, case: dict[str, Any]) -> None:
    evaluated = await spf.evaluate(
        zone, "", case["host"], case["mailfrom"], case["helo"], explanation="DEFAULT"
    )
    expected = case["result"]
    allowed = expected if isinstance(expected, list) else [expected]
    assert evaluated.result in allowed, (case["spec"], case.get("description"), evaluated)
    if "explanation" in case:
        assert evaluated.explanation == case["explanation"], evaluated
