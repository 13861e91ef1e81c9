"""The usage report of the client keys: ``GET /{ROUTE}/admin/usage``.

Query parameters, all optional: ``key`` (a key's id or name), ``model`` (exact), ``from`` and
``to`` (``YYYY-MM-DD``, UTC days, inclusive; default the 30 days up to today), ``format``
(``json``, the default, or ``csv``); ``from`` after ``to`` selects no row. A row is one day,
key and model: ``requests``, ``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
``errors`` and ``cost`` (in the currency of PRICES; 0 for unpriced models). Rows of deleted
keys stay, under their last name.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chatservice.errors import BadRequest
from chatservice.keystore import UsageRow

if TYPE_CHECKING:
    from chatservice.budgets import ClientKeys

DEFAULT_DAYS = 30
#: The one spelling of a day accepted (``date.fromisoformat`` takes others too).
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
COLUMNS = (
    "day",
    "key_id",
    "key",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "errors",
    "cost",
)


@dataclasses.dataclass(frozen=True)
class Report:
    """The rows asked for, with the query that chose them."""

    first: str
    last: str
    format: str
    rows: list[UsageRow]


def query(keys: ClientKeys, args: Mapping[str, str]) -> Report:
    """The report ``args`` (the query string) asks for; raises ``BadRequest``
    (``invalid_date`` naming ``from`` or ``to``, ``invalid_choice`` naming ``format``).
    """
    fmt = args.get("format", "json").lower()
    if fmt not in ("json", "csv"):
        raise BadRequest("invalid_choice", field="format", choices="json, csv")
    today = dt.datetime.now(dt.UTC).date()
    last = _day(args.get("to"), "to") or today
    first = _day(args.get("from"), "from") or last - dt.timedelta(days=DEFAULT_DAYS - 1)
    rows = keys.store.usage(first.isoformat(), last.isoformat())
    key, model = args.get("key"), args.get("model")
    if key:
        rows = [row for row in rows if key in (row.key_id, row.key_name)]
    if model:
        rows = [row for row in rows if row.model == model]
    return Report(first.isoformat(), last.isoformat(), fmt, rows)


def _day(value: str | None, field: str) -> dt.date | None:
    if value is None:
        return None
    try:
        if not DAY.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest("invalid_date", field=field) from None


def row_json(row: UsageRow) -> dict[str, Any]:
    """One row as the report shows it (``cost`` from the stored billionths)."""
    return {
        "day": row.day,
        "key_id": row.key_id,
        "key": row.key_name,
        "model": row.model,
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "errors": row.errors,
        "cost": row.cost_nanos / 1_000_000_000,
    }


def to_json(report: Report) -> dict[str, Any]:
    """``{"from", "to", "rows": [...], "totals": {requests, ..., cost}}``."""
    rows = [row_json(row) for row in report.rows]
    totals = {
        name: sum(row[name] for row in rows)
        for name in ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors")
    }
    totals["cost"] = sum(row.cost_nanos for row in report.rows) / 1_000_000_000
    return {"from": report.first, "to": report.last, "rows": rows, "totals": totals}


def to_csv(report: Report) -> str:
    """The rows as CSV with a header line (:data:`COLUMNS`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(row_json(row))
    return out.getvalue()
