"""Reading an import file row by row, never whole: UTF-8 with or without a BOM, the
delimiter (``,`` ``;`` or tab) taken from the header line, quoted fields with delimiters and
newlines; each row checked into a :class:`CheckedRow` or a list of :class:`RowProblem`.

Everything here is synchronous and CPU-bound: the importer runs it in a worker thread, one
batch at a time, so the event loop never parses.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from gateway_plugins.audience.addresses import AddressError, normalize_email

AttributeType = Literal["string", "number", "boolean"]
Target = str
"""``email``, ``name``, ``locale``, ``timezone``, ``attributes.<name>`` or ``ignore``."""

MAX_FIELD = 1000
LIMITS = {"name": 200, "locale": 35, "timezone": 64}
ROLE_LOCAL_PARTS = frozenset(
    {
        "abuse", "admin", "billing", "contact", "help", "hostmaster", "info", "marketing",
        "no-reply", "noreply", "office", "postmaster", "sales", "support", "webmaster",
    }
)  # fmt: skip
_ALIASES = {
    "email": "email",
    "e-mail": "email",
    "email address": "email",
    "e-mail address": "email",
    "mail": "email",
    "name": "name",
    "full name": "name",
    "locale": "locale",
    "language": "locale",
    "timezone": "timezone",
    "time zone": "timezone",
    "tz": "timezone",
}
_SLUG = re.compile(r"[^a-z0-9_]+")
_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_FLOAT = re.compile(r"^-?[0-9]+\.[0-9]+$")
csv.field_size_limit(1 << 20)


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (no header, not UTF-8, no email column)."""


class RowProblem(msgspec.Struct, frozen=True):
    code: str
    message: str
    warning: bool = False
    """A warning keeps the row (``role_address``); an error skips it."""


class CheckedRow(msgspec.Struct):
    row: int
    """The record's number in the file, the header being row 1 (as a spreadsheet shows it)."""
    email: str
    key: str
    fields: dict[str, str]
    """``name``, ``locale``, ``timezone`` when the file has them."""
    attributes: dict[str, Any]
    raw: list[str]
    warnings: list[RowProblem]


class BadRow(msgspec.Struct):
    row: int
    raw: list[str]
    problems: list[RowProblem]


def default_target(column: str) -> Target:
    name = column.strip().lower()
    if name in _ALIASES:
        return _ALIASES[name]
    slug = _SLUG.sub("_", name).strip("_")[:64]
    return f"attributes.{slug}" if slug else "ignore"


def sniff_delimiter(header_line: str) -> str:
    """The most frequent of ``,`` ``;`` and tab in the header line (``,`` on a tie of none)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@lru_cache(maxsize=1024)
def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _infer(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(value):
        return int(value)
    if _FLOAT.match(value):
        return float(value)
    return value


def _typed(value: str, declared: AttributeType) -> Any:
    """``value`` as the declared type; raises ``ValueError``."""
    if declared == "string":
        return value
    if declared == "boolean":
        lowered = value.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        raise ValueError(value)
    if _INT.match(value):
        return int(value)
    return float(value)


class RowReader:
    """Rows of one file, checked one by one (duplicates across the file are the importer's
    concern: it finds them in the database, so nothing here grows with the file)."""

    def __init__(
        self,
        path: Path,
        *,
        mapping: dict[str, Target] | None = None,
        types: dict[str, AttributeType] | None = None,
    ) -> None:
        self.path = path
        self._raw = path.open("rb")
        self._file = io.TextIOWrapper(self._raw, encoding="utf-8-sig", newline="")
        try:
            header_line = self._file.readline()
        except UnicodeDecodeError:
            self._file.close()
            raise ImportFormatError("the file is not UTF-8 text") from None
        if not header_line.strip():
            self._file.close()
            raise ImportFormatError("the file is empty; its first line must name the columns")
        self.delimiter = sniff_delimiter(header_line.splitlines()[0])
        self._file.seek(0)  # the utf-8-sig decoder starts over and skips the BOM again
        self._reader = csv.reader(self._file, delimiter=self.delimiter)
        self.columns = [c.strip() for c in next(self._reader)]
        mapping = mapping or {}
        self.targets = [mapping.get(c, default_target(c)) for c in self.columns]
        if "email" not in self.targets:
            self._file.close()
            raise ImportFormatError("no email column (name one 'email', or map one to it)")
        self.types = types or {}
        self._row = 1

    def close(self) -> None:
        self._file.close()

    def position(self) -> int:
        """Bytes of the file read so far (for a progress bar; ahead by one buffer)."""
        return self._raw.tell()

    def batch(self, size: int) -> list[CheckedRow | BadRow]:
        """Up to ``size`` more rows; an empty list at the end of the file. Raises
        :class:`ImportFormatError` on bytes that are not UTF-8."""
        out: list[CheckedRow | BadRow] = []
        try:
            for raw in self._reader:
                self._row += 1
                if not raw or raw == [""]:
                    continue  # blank line
                out.append(self._check(self._row, raw))
                if len(out) >= size:
                    break
        except UnicodeDecodeError:
            raise ImportFormatError(f"row {self._row + 1}: the file is not UTF-8 text") from None
        except csv.Error as e:
            raise ImportFormatError(f"row {self._row + 1}: {e}") from None
        return out

    def _check(self, row: int, raw: list[str]) -> CheckedRow | BadRow:
        if len(raw) != len(self.columns):
            return BadRow(
                row,
                raw,
                [
                    RowProblem(
                        "column_count", f"{len(raw)} fields, the header has {len(self.columns)}"
                    )
                ],
            )
        email = ""
        fields: dict[str, str] = {}
        attributes: dict[str, Any] = {}
        problems: list[RowProblem] = []
        for column, target, value in zip(self.columns, self.targets, raw, strict=True):
            value = value.strip()
            limit = LIMITS.get(target, MAX_FIELD)
            if len(value) > limit:
                problems.append(
                    RowProblem("field_too_long", f"{column}: longer than {limit} characters")
                )
                continue
            if target == "email":
                email = value
            elif target in LIMITS:
                fields[target] = value
            elif target.startswith("attributes.") and value:
                name = target.removeprefix("attributes.")
                declared = self.types.get(name)
                if declared is None:
                    attributes[name] = _infer(value)
                    continue
                try:
                    attributes[name] = _typed(value, declared)
                except ValueError:
                    problems.append(
                        RowProblem("bad_attribute_type", f"{column}: {value!r} is not a {declared}")
                    )
        zone = fields.get("timezone", "")
        if zone and not _zone_exists(zone):
            problems.append(RowProblem("bad_timezone", f"{zone!r} is not an IANA time zone"))
        key = ""
        if not email:
            problems.insert(0, RowProblem("missing_email", "the email field is empty"))
        else:
            try:
                key = normalize_email(email)
            except AddressError as e:
                problems.insert(0, RowProblem("invalid_email", str(e)))
        if problems:
            return BadRow(row, raw, problems)
        warnings = []
        if key.partition("@")[0] in ROLE_LOCAL_PARTS:
            warnings.append(
                RowProblem("role_address", "a role address, rarely a person", warning=True)
            )
        return CheckedRow(row, email, key, fields, attributes, raw, warnings)


def rows_of(reader: RowReader, size: int) -> Iterator[list[CheckedRow | BadRow]]:
    while batch := reader.batch(size):
        yield batch
