"""Hostile batch templates against a real ``gateway serve`` (bench/template_bench.py, short):
while a send-only key submits them in a loop, an SMTP client's greeting and ``/healthz`` stay
under 100 ms p99, legitimate batches keep completing, each hostile request gets 422 naming the
limit it broke, and the gateway's memory stays within the documented bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "template_bench.py"
EXPECTED_LIMIT = {
    "nested loops": "cpu_time",
    "string multiplication": "output_size",
    "huge power": "output_size",
    "output by loop": "output_size",
    "allocation": "memory",
}


@pytest.mark.serial
def test_hostile_templates_do_not_stall_the_gateway() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--duration", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for probe in ("greeting", "healthz"):
        assert figures["loaded"][probe]["n"] >= 100, figures
        assert figures["loaded"][probe]["p99_ms"] < 100, figures
    answered = {line.split(": ")[0]: line.split(": ")[1] for line in figures["hostile"]}
    # Each template's own 422 is checked one by one in tests/api/test_template_limits.py.
    assert set(answered) <= set(EXPECTED_LIMIT) and len(answered) >= 3, figures["hostile"]
    for name, answer in answered.items():
        assert answer == f"422 {EXPECTED_LIMIT[name]}", (name, figures["hostile"])
    assert set(figures["legit_batches"]) == {"202"}, figures["legit_batches"]
    assert figures["legit_batches"]["202"] >= 2
    assert figures["peak_rss_mb"] <= figures["rss_bound_mb"], figures
