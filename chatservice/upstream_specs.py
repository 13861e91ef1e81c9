"""The upstreams an operator configured: one :class:`UpstreamSpec` per ``[[upstreams]]`` entry.

The list comes from the TOML configuration file (``[[upstreams]]`` tables) or from the
UPSTREAMS variable holding the same list as JSON. Each entry:

- ``name`` (required): letters, digits, ``.``, ``_``, ``-``; unique; shown in the access log,
  the metrics and the admin view;
- ``type``: ``openai`` (an OpenAI-compatible API, the default) or ``local`` (the embedded
  model, so it can be a fallback);
- ``base_url`` (required for ``openai``), ``api_key`` (a string or a list), ``key_file``:
  the upstream's own key pool, with the same rules as API_KEY/KEY_FILE;
- ``models``: public model names it serves, ``*`` wildcards; omitted: the names its own
  ``/models`` lists (fetched when first needed, kept UPSTREAM_MODELS_TTL seconds);
- ``model_map``: public name -> the provider's name (``gpt-4o = "deepseek-chat"``); mapped
  names are served too;
- ``priority`` (integer, higher first, default 0), ``weight`` (a number > 0, the share among
  upstreams of the same priority, default 1);
- ``connect_timeout``, ``read_timeout``, ``stream_idle_timeout`` (seconds), ``retries``,
  ``proxy``: this upstream's own values (default: the UPSTREAM_* settings);
- ``headers`` and ``query``: extra headers and query parameters on every call (Azure's
  ``api-version``);
- ``client_keys``: whether a key the client brought (OpenAI face bearer ``sk-...``) may be
  sent to this upstream; default false, so no client key reaches a provider it was not meant
  for.

Invalid entries raise ``ValueError`` with one line naming the entry and the field (the
settings prefix it with ``UPSTREAMS:``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from chatservice.settings import Secret, _proxy, _url

_NAME = re.compile(r"[A-Za-z0-9._-]{1,40}")
_KNOWN_FIELDS = frozenset(
    {
        "name",
        "type",
        "base_url",
        "api_key",
        "key_file",
        "models",
        "model_map",
        "priority",
        "weight",
        "connect_timeout",
        "read_timeout",
        "stream_idle_timeout",
        "retries",
        "proxy",
        "headers",
        "query",
        "client_keys",
    }
)


@dataclasses.dataclass(frozen=True)
class UpstreamSpec:
    """One configured upstream (see the module docstring). ``None`` timeouts, retries and
    proxy mean "the UPSTREAM_* setting"; ``models`` empty means "what its ``/models`` lists".
    """

    name: str
    type: str = "openai"
    base_url: str = ""
    api_keys: tuple[Secret, ...] = ()
    key_file: str = ""
    models: tuple[str, ...] = ()
    model_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    priority: int = 0
    weight: float = 1.0
    connect_timeout: float | None = None
    read_timeout: float | None = None
    stream_idle_timeout: float | None = None
    retries: int | None = None
    proxy: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    client_keys: bool = False

    @property
    def local(self) -> bool:
        """True for the embedded model."""
        return self.type == "local"


def parse_upstreams(raw: str) -> tuple[UpstreamSpec, ...]:
    """The UPSTREAMS value (a JSON list of objects; empty: none). Raises ``ValueError``."""
    if not raw.strip():
        return ()
    try:
        entries = json.loads(raw)
    except ValueError:
        raise ValueError("expected a JSON list of objects ([[upstreams]] in TOML)") from None
    if not isinstance(entries, list):
        raise ValueError("expected a list of upstream objects")
    specs: list[UpstreamSpec] = []
    for index, entry in enumerate(entries, start=1):
        label = f"entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label = f"entry {index} ({entry['name'][:40]})"
        try:
            spec = _spec(entry)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        if any(other.name == spec.name for other in specs):
            raise ValueError(f"{label}: name: {spec.name!r} is used twice")
        specs.append(spec)
    return tuple(specs)


def _spec(entry: Any) -> UpstreamSpec:
    if not isinstance(entry, dict):
        raise ValueError("expected a table of fields")
    unknown = sorted(set(entry) - _KNOWN_FIELDS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("name: expected 1 to 40 of letters, digits, '.', '_', '-'")
    kind = _field(entry, "type", str, "openai")
    if kind not in ("openai", "local"):
        raise ValueError("type: expected openai or local")
    base_url = ""
    if kind == "openai":
        if "base_url" not in entry:
            raise ValueError("base_url: required for an openai upstream")
        base_url = _check("base_url", _url, _field(entry, "base_url", str, ""))
    return UpstreamSpec(
        name=name,
        type=kind,
        base_url=base_url,
        api_keys=tuple(Secret(key) for key in _strings(entry, "api_key")),
        key_file=_field(entry, "key_file", str, ""),
        models=tuple(_strings(entry, "models")),
        model_map=_table(entry, "model_map"),
        priority=_field(entry, "priority", int, 0),
        weight=_positive(entry, "weight", 1.0),
        connect_timeout=_positive(entry, "connect_timeout", None),
        read_timeout=_positive(entry, "read_timeout", None),
        stream_idle_timeout=_positive(entry, "stream_idle_timeout", None),
        retries=_retries(entry),
        proxy=_check("proxy", _proxy, _field(entry, "proxy", str, "")) or None,
        headers=_table(entry, "headers"),
        query=_table(entry, "query"),
        client_keys=_field(entry, "client_keys", bool, False),
    )


def _check(name: str, parse: Any, value: str) -> Any:
    try:
        return parse(value) if value else value
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _field(entry: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = entry.get(name, default)
    # bool is an int in Python: a priority of true is a mistake, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name}: expected {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _strings(entry: dict[str, Any], name: str) -> list[str]:
    value = entry.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name}: expected a string or a list of non-empty strings")
    return [item.strip() for item in value if item.strip()]


def _table(entry: dict[str, Any], name: str) -> dict[str, str]:
    value = entry.get(name, {})
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError(f"{name}: expected a table of strings")
    return dict(value)


def _positive(entry: dict[str, Any], name: str, default: float | None) -> float | None:
    value = entry.get(name, default)
    if value is default:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: expected a number > 0")
    return float(value)


def _retries(entry: dict[str, Any]) -> int | None:
    if "retries" not in entry:
        return None
    value = _field(entry, "retries", int, 0)
    if value < 0:
        raise ValueError("retries: expected an integer >= 0")
    return value
