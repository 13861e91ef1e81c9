"""Client API keys (AUTH_MODE=keys): what a key is, how one is made, read from JSON and shown.

A key is ``csk-`` followed by 43 URL-safe random characters (256 bits); its prefix tells it
apart from an upstream ``sk-`` key, so the OpenAI-compatible face never forwards it. The
service shows a key once, when it is created; the store keeps only its SHA-256 (lowercase
hex), a masked form (``csk-...abcd``) and its settings (:class:`KeyRecord`).

Per key: ``name`` (unique, 1 to 64 characters; the Prometheus label), ``models`` (patterns
with ``*`` and ``?`` wildcards, fnmatch-style and case-sensitive; ``["*"]`` = all), ``rpm``
(requests per minute) and ``tpm`` (tokens per minute; 0 = no limit), token budgets
``budget_tokens`` (in total), ``daily_budget_tokens`` and ``monthly_budget_tokens`` (reset at
00:00 UTC and on the 1st of the month, UTC; ``None`` = no budget), ``expires_at`` (Unix
seconds, ``None`` = never) and ``enabled``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import hashlib
import secrets
import uuid
from typing import Any

from chatservice import validation
from chatservice.errors import BadRequest

PREFIX = "csk-"
MAX_NAME = 64
MAX_PATTERNS = 64
#: Largest limit or budget accepted (fits a 64-bit counter with room for reservations).
MAX_AMOUNT = 10**15
#: Latest expiry accepted: the end of year 9999, UTC (Unix seconds).
MAX_TIME = 253402300799
#: Fields a client may set, in the order they are shown.
SETTABLE = (
    "name",
    "models",
    "rpm",
    "tpm",
    "budget_tokens",
    "daily_budget_tokens",
    "monthly_budget_tokens",
    "expires_at",
    "enabled",
)
BUDGETS = ("budget_tokens", "daily_budget_tokens", "monthly_budget_tokens")


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """A client key as stored: everything but the key itself.

    :ivar id: public identifier (32 hex characters), used in admin paths and usage rows.
    :ivar masked: ``csk-...abcd``, safe to show.
    :ivar expires_at: Unix seconds, or ``None``.
    :ivar created_at: Unix seconds.
    """

    id: str
    name: str
    masked: str
    models: tuple[str, ...] = ("*",)
    rpm: int = 0
    tpm: int = 0
    budget_tokens: int | None = None
    daily_budget_tokens: int | None = None
    monthly_budget_tokens: int | None = None
    expires_at: float | None = None
    enabled: bool = True
    created_at: float = 0.0

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model`` (one of its patterns matches)."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def expired(self, now: float) -> bool:
        """Whether the key has expired at ``now`` (Unix seconds)."""
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The stored form: a JSON object of every field."""
        data = dataclasses.asdict(self)
        data["models"] = list(self.models)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        """The record of :meth:`to_json`'s object."""
        return cls(**{**data, "models": tuple(data["models"])})

    def public(self) -> dict[str, Any]:
        """What the admin API and the CLI show: the fields, ``key`` masked, times in ISO 8601
        (UTC), never the key or its hash.
        """
        data = self.to_json()
        data["key"] = data.pop("masked")
        data["expires_at"] = _iso(self.expires_at)
        data["created_at"] = _iso(self.created_at)
        return {"id": data.pop("id"), "key": data.pop("key"), **data}


def new_key() -> str:
    """A fresh client key: ``csk-`` and 256 random bits, URL-safe base64."""
    return PREFIX + secrets.token_urlsafe(32)


def new_id() -> str:
    """A fresh public key id (random, unrelated to the key)."""
    return uuid.uuid4().hex


def hash_key(key: str) -> str:
    """The lowercase hex SHA-256 of ``key`` (UTF-8): what the store keeps."""
    return hashlib.sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


def mask(key: str) -> str:
    """``csk-...abcd``: the prefix and the last four characters."""
    return f"{PREFIX}...{key[-4:]}"


def parse_settings(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The key settings in a JSON body (admin API) or built from the command line.

    Only the fields present are returned (``null`` clears a budget, the expiry or a limit);
    ``name`` is required when ``creating``; ``models`` is a list; ``expires_at`` is Unix
    seconds (:func:`parse_time` reads an ISO 8601 time for the command line). Raises
    ``BadRequest`` naming the field.
    """
    out: dict[str, Any] = {}
    if creating or "name" in body:
        name = validation.string(body, "name", required=True, non_empty=True) or ""
        name = name.strip()
        if len(name) > MAX_NAME or any(c in name for c in "\r\n\t"):
            raise BadRequest("invalid_key_name", field="name", max=MAX_NAME)
        out["name"] = name
    if "models" in body:
        out["models"] = _patterns(body["models"])
    for field in ("rpm", "tpm"):
        if field in body:
            out[field] = 0 if body[field] is None else _amount(body, field)
    for field in BUDGETS:
        if field in body:
            out[field] = None if body[field] is None else _amount(body, field)
    if "expires_at" in body:
        out["expires_at"] = _time(body["expires_at"])
    if "enabled" in body:
        if body["enabled"] is None:  # unlike a budget, a key's state cannot be cleared
            raise BadRequest("not_a_boolean", field="enabled")
        out["enabled"] = validation.boolean(body, "enabled", True)
    return out


def _amount(body: dict[str, Any], field: str) -> int:
    value = validation.integer(body, field, 0, MAX_AMOUNT)
    return 0 if value is None else value


def _patterns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_PATTERNS:
        raise BadRequest("invalid_model_patterns", field="models", max=MAX_PATTERNS)
    patterns = tuple(item.strip() for item in value if isinstance(item, str) and item.strip())
    if len(patterns) != len(value):
        raise BadRequest("invalid_model_patterns", field="models", max=MAX_PATTERNS)
    return patterns


def _time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TIME:
        return float(value)
    raise BadRequest("invalid_time", field="expires_at")


def parse_time(text: str) -> float:
    """Unix seconds of an ISO 8601 date or time (UTC when it names no zone); raises
    ``BadRequest`` ``invalid_time``.
    """
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("invalid_time", field="expires_at") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return _time(parsed.timestamp()) or 0.0


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
