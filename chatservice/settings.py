"""Typed settings read from the environment, then a ``.env`` file, then defaults.

Every variable the service understands is declared once, in :data:`FIELDS`; ``.env.example``
documents the same names (a test keeps the two in step). An invalid value raises
:class:`ConfigError` whose message is one line naming the variable and the problem, which is
what the entry point prints before it exits. Secrets are wrapped in :class:`Secret`, so no
``repr``, ``str`` or log line of the settings can show them.

Modelled on starlette's ``Config``/``Secret`` and flask-limiter's "config keys named in one
place"; the variable names come from the wrapper services (``ROUTE``, ``LANG``, ``*_LIMIT``
and ``API_KEY`` from the Docker ChatGPT API platform) and from the project's own needs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

from chatservice.i18n import normalize_language


class ConfigError(ValueError):
    """A setting has an invalid value; ``str(err)`` is one line naming the variable."""


class Secret:
    """A secret string (an API key) that never shows itself in ``repr``, ``str`` or format.

    Use :meth:`get_secret_value` at the one place that must send it (an Authorization header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """Return the real value: only for the outbound call that needs it."""
        return self._value

    def masked(self) -> str:
        """A form safe to show an operator: ``sk-...abcd`` (prefix and last 4 characters)."""
        value = self._value
        if len(value) < 12:
            return "..."
        return f"{value[:3]}...{value[-4:]}"

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("Secret values are not picklable")


# --- value parsers: each takes the raw string and raises ValueError with a short reason ------


def _int(minimum: int = 0) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer >= {minimum}, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {raw!r}")
        return value

    return parse


def _limit(raw: str) -> int:
    """A per-IP request limit: empty or 0 means off (the Docker ChatGPT API platform: "0
    means unlimited")."""
    if not raw.strip():
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"expected a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"expected a non-negative integer, got {raw!r}")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {raw!r}")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _route(raw: str) -> str:
    """Normalise ROUTE to a path prefix: ``"api"``, ``"/api/"`` -> ``"/api"``; empty -> ``""``."""
    parts = [part for part in raw.strip().split("/") if part]
    for part in parts:
        if part in (".", "..") or any(c in part for c in "<>?#%\\ "):
            raise ValueError(f"not a usable path segment: {part!r}")
    return "".join(f"/{part}" for part in parts)


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return value


def _keys(raw: str) -> tuple[Secret, ...]:
    return tuple(Secret(key.strip()) for key in raw.split(",") if key.strip())


def _text(raw: str) -> str:
    return raw.strip()


def _lang(raw: str) -> str:
    # Unknown languages fall back to English rather than stopping startup.
    return normalize_language(raw) or "en"


def _path(raw: str) -> str:
    return os.path.expanduser(raw.strip())


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _aliases(raw: str) -> dict[str, str]:
    """``old=new,old2=new2`` -> ``{"old": "new", ...}`` (MODEL_ALIASES)."""
    aliases = {}
    for item in _list(raw):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ValueError(f"expected name=model pairs separated by commas, got {item!r}")
        aliases[old.strip()] = new.strip()
    return aliases


def _raw_text(raw: str) -> str:
    return raw


def _secret(raw: str) -> Secret | None:
    return Secret(raw.strip()) if raw.strip() else None


def _optional_int(minimum: int, maximum: int) -> Callable[[str], int | None]:
    def parse(raw: str) -> int | None:
        if not raw.strip():
            return None
        value = _int(minimum)(raw)
        if value > maximum:
            raise ValueError(f"expected an integer from {minimum} to {maximum}, got {raw!r}")
        return value

    return parse


def _optional_number(minimum: float, maximum: float) -> Callable[[str], float | None]:
    def parse(raw: str) -> float | None:
        if not raw.strip():
            return None
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a number from {minimum:g} to {maximum:g}, got {raw!r}")
        return value

    return parse


def _proxy(raw: str) -> str:
    """A proxy URL; ``host:port`` without a scheme means ``http://host:port`` (ChatGPT-API on gin's
    README example has no scheme, which broke every call in the original).
    """
    value = raw.strip()
    if not value:
        return ""
    if "://" not in value:
        value = f"http://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected a proxy such as http://host:port or host:port")
    return value


STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")


def _storage_uri(raw: str) -> str:
    value = raw.strip() or "memory://"
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in STORAGE_SCHEMES:
        raise ValueError(f"expected one of {', '.join(s + '://' for s in STORAGE_SCHEMES)}")
    return value


def _store_url(raw: str) -> str:
    value = raw.strip()
    if value.startswith("sqlite://"):
        if len(value) <= len("sqlite:///") or not value.startswith("sqlite:///"):
            raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return value
    try:
        return _storage_uri(value)
    except ValueError:
        raise ValueError("expected sqlite:///path.db, redis://host:6379 or memory://") from None


@dataclasses.dataclass(frozen=True)
class Field:
    """One environment variable: its name, parser, default (raw string) and attribute."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    default: str


FIELDS: tuple[Field, ...] = (
    Field("HOST", "host", _text, "0.0.0.0"),  # noqa: S104 - listening on all interfaces is the documented default
    Field("PORT", "port", _int(1), "5000"),
    Field("WORKERS", "workers", _int(1), "1"),
    Field("WORKER_CONNECTIONS", "worker_connections", _int(1), "4096"),
    Field("ROUTE", "route", _route, "api"),
    Field("CHAT_LANG", "default_lang", _lang, "en"),
    Field("HOUR_LIMIT", "hour_limit", _limit, ""),
    Field("MINUTE_LIMIT", "minute_limit", _limit, ""),
    Field("SECOND_LIMIT", "second_limit", _limit, ""),
    Field("RATELIMIT_STORAGE_URI", "ratelimit_storage_uri", _storage_uri, "memory://"),
    Field("TRUSTED_PROXIES", "trusted_proxies", _int(0), "0"),
    Field("API_KEY", "api_keys", _keys, ""),
    Field("KEY_FILE", "key_file", _path, ""),
    Field("AUTO_REMOVE_KEYS", "auto_remove_keys", _bool, "true"),
    Field("ADMIN_TOKEN", "admin_token", _secret, ""),
    Field("UPSTREAM_BASE_URL", "upstream_base_url", _url, "https://api.openai.com/v1"),
    Field("UPSTREAM_CONNECT_TIMEOUT", "upstream_connect_timeout", _seconds, "10"),
    Field("UPSTREAM_READ_TIMEOUT", "upstream_read_timeout", _seconds, "120"),
    Field("UPSTREAM_STREAM_IDLE_TIMEOUT", "upstream_stream_idle_timeout", _seconds, "60"),
    Field("UPSTREAM_RETRIES", "upstream_retries", _int(0), "2"),
    Field("UPSTREAM_RPM", "upstream_rpm", _limit, "0"),
    Field("UPSTREAM_POOL_SIZE", "upstream_pool_size", _int(1), "100"),
    Field("CHAT_PROXY", "proxy", _proxy, ""),
    Field("HTTPS_PROXY", "https_proxy", _proxy, ""),
    Field("HTTP_PROXY", "http_proxy", _proxy, ""),
    Field("NO_PROXY", "no_proxy", _text, ""),
    Field("BACKEND", "backend", _choice("auto", "openai", "local"), "auto"),
    Field("LOCAL_MODEL_PATH", "local_model_path", _path, ""),
    Field("LOCAL_MODEL_ID", "local_model_id", _text, "smollm2-135m-instruct"),
    Field("LOCAL_MAX_QUEUE", "local_max_queue", _int(0), "16"),
    Field("LOCAL_PRELOAD", "local_preload", _bool, "0"),
    Field("LOCAL_CONTEXT_TOKENS", "local_context_tokens", _int(128), "2048"),
    Field("LOCAL_THREADS", "local_threads", _int(0), "0"),
    Field("DEFAULT_MODEL", "default_model", _text, "gpt-3.5-turbo"),
    Field("MAX_BODY_BYTES", "max_body_bytes", _int(1), "1048576"),
    Field("BOT_DESC", "bot_desc", _raw_text, "You are a helpful assistant."),
    Field("HISTORY_MAX_MESSAGES", "history_max_messages", _int(1), "20"),
    Field("CONVERSATION_TTL", "conversation_ttl", _seconds, "1800"),
    Field("CHAT_MODEL", "chat_model", _text, ""),
    Field("CHAT_MAXTOKENS", "chat_max_tokens", _optional_int(1, 1_000_000), ""),
    Field("CHAT_TEMPERATURE", "chat_temperature", _optional_number(0, 2), ""),
    Field("CHAT_TOPP", "chat_top_p", _optional_number(0, 1), ""),
    Field("CHAT_PRESENCEPENALTY", "chat_presence_penalty", _optional_number(-2, 2), ""),
    Field("CHAT_FREQUENCYPENALTY", "chat_frequency_penalty", _optional_number(-2, 2), ""),
    Field("STORE_URL", "store_url", _store_url, "sqlite:///data/chatservice.db"),
    Field("MAX_CONTEXT_MESSAGES", "max_context_messages", _int(1), "20"),
    Field("COMPLETION_MODEL", "completion_model", _text, "gpt-3.5-turbo-instruct"),
    Field("TURBO_MODEL", "turbo_model", _text, "gpt-3.5-turbo"),
    Field("GPT4_MODEL", "gpt4_model", _text, "gpt-4"),
    Field("AUTH_MODE", "auth_mode", _choice("none", "simple", "normal"), "none"),
    Field("AUTH_TOKEN", "auth_token", _secret, ""),
    Field("AUTH_REPLAY_WINDOW", "auth_replay_window", _seconds, "86400"),
    Field("CONFIG_FILE", "config_file", _path, ""),
    Field("LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"), "info"),
    Field("LOG_PROMPTS", "log_prompts", _bool, "0"),
    Field("LOG_FORMAT", "log_format", _choice("text", "json"), "text"),
    Field("LOG_DIR", "log_dir", _path, ""),
    Field("LOG_RETENTION_DAYS", "log_retention_days", _int(1), "14"),
    Field("GRACEFUL_TIMEOUT", "graceful_timeout", _seconds, "30"),
    Field("CORS_ORIGINS", "cors_origins", _list, ""),
    Field("PLAYGROUND", "playground", _bool, "1"),
    Field("ALLOWED_MODELS", "allowed_models", _list, ""),
    Field("MODEL_ALIASES", "model_aliases", _aliases, ""),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with :meth:`from_env`.

    Times are in seconds, sizes in bytes. ``route`` is ``""`` or a path starting with ``/``
    (``"/api"``, ``"/v2/chat"``). ``api_keys`` holds :class:`Secret` values. A limit of 0 is off.
    """

    host: str
    port: int
    workers: int
    worker_connections: int
    route: str
    default_lang: str
    hour_limit: int
    minute_limit: int
    second_limit: int
    ratelimit_storage_uri: str
    trusted_proxies: int
    api_keys: tuple[Secret, ...]
    key_file: str
    auto_remove_keys: bool
    admin_token: Secret | None
    upstream_base_url: str
    upstream_connect_timeout: float
    upstream_read_timeout: float
    upstream_stream_idle_timeout: float
    upstream_retries: int
    upstream_rpm: int
    upstream_pool_size: int
    proxy: str
    https_proxy: str
    http_proxy: str
    no_proxy: str
    backend: str
    local_model_path: str
    local_model_id: str
    local_max_queue: int
    local_preload: bool
    local_context_tokens: int
    local_threads: int
    default_model: str
    max_body_bytes: int
    bot_desc: str
    history_max_messages: int
    conversation_ttl: float
    chat_model: str
    chat_max_tokens: int | None
    chat_temperature: float | None
    chat_top_p: float | None
    chat_presence_penalty: float | None
    chat_frequency_penalty: float | None
    store_url: str
    max_context_messages: int
    completion_model: str
    turbo_model: str
    gpt4_model: str
    auth_mode: str
    auth_token: Secret | None
    auth_replay_window: float
    config_file: str
    log_level: str
    log_prompts: bool
    log_format: str
    log_dir: str
    log_retention_days: int
    graceful_timeout: float
    cors_origins: tuple[str, ...]
    playground: bool
    allowed_models: tuple[str, ...]
    model_aliases: dict[str, str]

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Read settings: ``environ`` (default: ``os.environ``), then ``env_file``, then the
        TOML file CONFIG_FILE (empty: ``config.toml``, when present), then defaults.

        ChatGPT-API on gin's ``CHAT_``-prefixed names and the lower-case proxy variables are
        accepted as aliases (:data:`ALIASES`); the canonical name wins. ``overrides`` set attributes
        directly (tests use it). Raises :class:`ConfigError`.
        """
        layered: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            layered.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        layered.update(os.environ if environ is None else environ)
        layered = _resolve_aliases(layered)

        source = _read_config_file(layered)
        source.update(layered)
        # CHAT_LANG wins over LANG; LANG is the POSIX locale most machines already set.
        if not source.get("CHAT_LANG", "").strip() and source.get("LANG", "").strip():
            source["CHAT_LANG"] = source["LANG"]

        values: dict[str, Any] = {}
        for field in FIELDS:
            raw = source.get(field.env)
            if raw is None:
                raw = field.default
            try:
                values[field.attr] = field.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{field.env}: {exc}") from None
        values.update(overrides)
        if values["auth_mode"] != "none" and values["auth_token"] is None:
            raise ConfigError(f"AUTH_TOKEN: required when AUTH_MODE is {values['auth_mode']}")
        return cls(**values)

    @property
    def rate_limits(self) -> list[str]:
        """The per-client limits in flask-limiter's notation, e.g. ``["2/second", "5/minute"]``."""
        windows = (
            ("second", self.second_limit),
            ("minute", self.minute_limit),
            ("hour", self.hour_limit),
        )
        return [f"{amount}/{window}" for window, amount in windows if amount > 0]


#: Other names accepted for a variable, in priority order after the canonical one:
#: ChatGPT-API on gin's ``CHAT_`` variables, ``PROXY``, and the lower-case proxy variables of
#: curl and requests.
ALIASES: dict[str, tuple[str, ...]] = {
    "PORT": ("CHAT_PORT",),
    "API_KEY": ("CHAT_APIKEY",),
    "BOT_DESC": ("CHAT_BOTDESC",),
    "CHAT_PROXY": ("PROXY",),
    "HTTPS_PROXY": ("https_proxy",),
    "HTTP_PROXY": ("http_proxy",),
    "NO_PROXY": ("no_proxy",),
}
_KNOWN = {field.env for field in FIELDS}


def _resolve_aliases(source: Mapping[str, str]) -> dict[str, str]:
    resolved = dict(source)
    for name, aliases in ALIASES.items():
        if name in resolved:
            continue
        for alias in aliases:
            if alias in resolved:
                resolved[name] = resolved[alias]
                break
    return resolved


def _read_config_file(source: Mapping[str, str]) -> dict[str, str]:
    """The settings of the TOML file named by CONFIG_FILE (a missing default file is fine).

    Keys are the variable names in any case (``port``, ``API_KEY``), ChatGPT-API on gin's short
    names (``apikey`` for ``CHAT_APIKEY``), inside any table. Lists are joined with commas.
    """
    explicit = bool(source.get("CONFIG_FILE", "").strip())
    path = Path(os.path.expanduser(source.get("CONFIG_FILE", "").strip() or "config.toml"))
    if not path.is_file():
        if explicit:
            raise ConfigError(f"CONFIG_FILE: no such file: {path}")
        return {}
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"CONFIG_FILE: {path}: {exc}") from None
    values: dict[str, str] = {}
    for key, value in _flatten(document):
        name = _config_name(key)
        if name is None:
            raise ConfigError(f"CONFIG_FILE: {path}: unknown setting {key!r}")
        values[name] = _config_value(value)
    return _resolve_aliases(values)


def _flatten(table: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value)
        else:
            yield key, value


def _config_name(key: str) -> str | None:
    upper = key.upper()
    aliases = {alias.upper(): alias for names in ALIASES.values() for alias in names}
    for candidate in (upper, f"CHAT_{upper}"):
        if candidate in _KNOWN:
            return candidate
        if candidate in aliases:
            return aliases[candidate]
    return None


def _config_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)
