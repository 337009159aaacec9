"""Import files with planted faults, and what an import of them must report.

``plant(rows, faults, seed)`` gives the file's bytes (UTF-8 with a BOM, ``;`` as delimiter,
quoted fields holding ``;``, ``,``, quotes and newlines, IDN domains) and the exact per-row
codes expected. Addresses to suppress and to unsubscribe beforehand are returned with it: the
caller sets those up (through the API) so ``suppressed`` and ``unsubscribed_kept`` can occur.
"""

from __future__ import annotations

import csv
import io
import random

HEADER = ["Email", "Name", "Language", "Time zone", "plan", "seats", "joined"]
CODES = (
    "invalid_email",
    "missing_email",
    "duplicate_in_file",
    "column_count",
    "field_too_long",
    "bad_timezone",
    "suppressed",
    "unsubscribed_kept",
    "role_address",
)
WARNINGS = ("role_address", "unsubscribed_kept")
REFUSED_BY_READER = (
    "invalid_email",
    "missing_email",
    "duplicate_in_file",
    "column_count",
    "field_too_long",
    "bad_timezone",
)
"""Rows with these codes are still imported (the contact is created or updated)."""


class Planted:
    def __init__(self) -> None:
        self.data = b""
        self.expected: dict[int, str] = {}
        """Row number (header = 1) → the code that row must get."""
        self.suppress: list[str] = []
        self.unsubscribe: list[str] = []
        self.rows = 0

    def count(self, code: str) -> int:
        return sum(1 for c in self.expected.values() if c == code)

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.expected.values() if c not in WARNINGS)

    @property
    def subscribed(self) -> int:
        return self.rows - self.skipped - self.count("unsubscribed_kept")


def plant(rows: int, faults: int, seed: int = 2101) -> Planted:
    rng = random.Random(seed)
    out = Planted()
    out.rows = rows
    fault_rows = sorted(rng.sample(range(3, rows + 2), faults))  # row 2 stays clean
    kinds = [CODES[i % len(CODES)] for i in range(faults)]
    rng.shuffle(kinds)
    planted = dict(zip(fault_rows, kinds, strict=True))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(HEADER)
    written: list[str] = []
    for row in range(2, rows + 2):
        email = f"person{row}@{'bücher.example' if row % 97 == 0 else 'example.org'}"
        name = rng.choice(["Ann", 'Lee, "Bo"; Jr.', "Multi\nLine", "Zoë"])
        fields = [
            email,
            name,
            rng.choice(["en", "de"]),
            "Europe/Berlin",
            "pro",
            str(row % 9),
            "2026-01-02",
        ]
        code = planted.get(row)
        if code == "invalid_email":
            fields[0] = f"person{row}.example.org"
        elif code == "missing_email":
            fields[0] = ""
        elif code == "duplicate_in_file":
            fields[0] = rng.choice(written).upper()
        elif code == "column_count":
            fields = fields[:-2]
        elif code == "field_too_long":
            fields[1] = "x" * 201
        elif code == "bad_timezone":
            fields[3] = "Mars/Olympus_Mons"
        elif code == "suppressed":
            out.suppress.append(email)
        elif code == "unsubscribed_kept":
            out.unsubscribe.append(email)
        elif code == "role_address":
            fields[0] = f"info@role{row}.example.org"
        if code is not None:
            out.expected[row] = code
        if code not in REFUSED_BY_READER:  # a later copy of these is not a duplicate
            written.append(fields[0])
        writer.writerow(fields)
    out.data = b"\xef\xbb\xbf" + buffer.getvalue().encode()
    return out


def error_rows(errors_csv: bytes) -> tuple[list[str], dict[int, str]]:
    """The header and {row: code} of an ``errors.csv``."""
    reader = csv.reader(io.StringIO(errors_csv.decode(), newline=""))
    header = next(reader)
    found: dict[int, str] = {}
    for record in reader:
        row, code = int(record[-3]), record[-2]
        assert row not in found, f"row {row} listed twice"
        found[row] = code
    return header, found
