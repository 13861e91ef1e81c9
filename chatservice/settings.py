"""Typed settings, each declared once as an attribute of :class:`Settings`.

Sources, the first that sets a variable wins:

1. command-line flags of ``python3 app.py`` (``--host``, ``--port``, ``--route``,
   ``--workers``, ``--config``; app.py passes them in as environment overrides);
2. the process environment;
3. a ``.env`` file in the working directory (``env_file``);
4. the TOML file CONFIG_FILE (default ``config.toml`` when present): keys are the variable
   names in any case, in any table;
5. the default declared with the attribute.

Older or other names of a variable (:data:`ALIASES`: ChatGPT-API on gin's ``CHAT_`` names,
``RATELIMIT_STORAGE_URI`` for SHARED_STATE_URL, the lower-case proxy variables) count as the
variable itself in each source; the canonical name wins. :data:`FIELDS` lists every
variable, derived from the class; ``.env.example`` documents the same names (a test keeps the
two in step). An invalid value raises :class:`ConfigError` whose message is one line naming
the variable and the problem, which is what the entry point prints before it exits. Secrets
are wrapped in :class:`Secret`, so no ``repr``, ``str`` or log line of the settings can show
them.

Modelled on starlette's ``Config``/``Secret`` and flask-limiter's "config keys named in one
place"; the variable names come from the wrapper services (``ROUTE``, ``LANG``, ``*_LIMIT``
and ``API_KEY`` from the Docker ChatGPT API platform) and from the project's own needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
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


def _upstreams(raw: str) -> tuple[Any, ...]:
    """UPSTREAMS: a JSON list of upstream objects (``[[upstreams]]`` in the TOML file)."""
    # Imported here: the spec module builds on this one (Secret and the URL parsers).
    from chatservice.upstream_specs import parse_upstreams

    return parse_upstreams(raw)


def _windows(raw: str) -> dict[str, int]:
    """``model=tokens,model@upstream=tokens`` -> ``{"model": tokens, ...}`` (CONTEXT_WINDOWS)."""
    windows = {}
    for item in _list(raw):
        name, sep, tokens = item.rpartition("=")
        if not sep or not name.strip() or not tokens.strip().isdigit() or int(tokens) < 1:
            raise ValueError(f"expected model=tokens pairs separated by commas, got {item!r}")
        windows[name.strip()] = int(tokens)
    return windows


def _cache_url(raw: str) -> str:
    """CACHE_URL: empty (off), memory:// or a redis:// URL."""
    value = raw.strip()
    if value and value.split("://", 1)[0] not in STORAGE_SCHEMES:
        raise ValueError("expected empty (off), memory:// or redis://host:6379")
    return value


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


def _prices(raw: str) -> dict[str, tuple[float, float]]:
    """``model=in/out,...`` (per million tokens; TOML ``[prices]``) -> ``{model: (in, out)}``."""
    prices = {}
    for item in _list(raw):
        model, sep, pair = item.partition("=")
        given, slash, taken = pair.partition("/")
        try:
            price = (float(given), float(taken))
        except ValueError:
            price = (-1.0, -1.0)
        finite = all(map(math.isfinite, price))
        if not sep or not slash or not model.strip() or min(price) < 0 or not finite:
            raise ValueError(f"expected model=input/output prices per million tokens, got {item!r}")
        prices[model.strip()] = price
    return prices


def _number(minimum: float, maximum: float) -> Callable[[str], float]:
    optional = _optional_number(minimum, maximum)

    def parse(raw: str) -> float:
        value = optional(raw)
        if value is None:
            raise ValueError(f"expected a number from {minimum:g} to {maximum:g}, got {raw!r}")
        return value

    return parse


#: The embedded model's default system message (chosen with bench/quality.py).
LOCAL_SYSTEM_PROMPT = "Answer the question directly and briefly, in the language of the question."


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


#: OpenAI's API, the upstream when UPSTREAM_BASE_URL is not set.
DEFAULT_UPSTREAM = "https://api.openai.com/v1"


def _setting(env: str, parse: Callable[[str], Any], default: str) -> Any:
    """A :class:`Settings` attribute read from the variable ``env`` with ``parse`` (which
    raises ``ValueError`` for a bad value); ``default`` is the raw text used when no source
    sets it."""
    return dataclasses.field(metadata={"env": env, "parse": parse, "default": default})


@dataclasses.dataclass(frozen=True)
class Settings:
    """The service's configuration; build it with :meth:`from_env`.

    Times are in seconds, sizes in bytes. ``route`` is ``""`` or a path starting with ``/``
    (``"/api"``, ``"/v2/chat"``). ``api_keys`` holds :class:`Secret` values. A limit of 0 is off.
    """

    host: str = _setting("HOST", _text, "0.0.0.0")  # noqa: S104 - listening on all interfaces is the documented default
    port: int = _setting("PORT", _int(1), "5000")
    workers: int = _setting("WORKERS", _int(1), "1")
    worker_connections: int = _setting("WORKER_CONNECTIONS", _int(1), "4096")
    route: str = _setting("ROUTE", _route, "api")
    default_lang: str = _setting("CHAT_LANG", _lang, "en")
    hour_limit: int = _setting("HOUR_LIMIT", _limit, "")
    minute_limit: int = _setting("MINUTE_LIMIT", _limit, "")
    second_limit: int = _setting("SECOND_LIMIT", _limit, "")
    shared_state_url: str = _setting("SHARED_STATE_URL", _storage_uri, "memory://")
    trusted_proxies: int = _setting("TRUSTED_PROXIES", _int(0), "0")
    api_keys: tuple[Secret, ...] = _setting("API_KEY", _keys, "")
    key_file: str = _setting("KEY_FILE", _path, "")
    auto_remove_keys: bool = _setting("AUTO_REMOVE_KEYS", _bool, "true")
    admin_token: Secret | None = _setting("ADMIN_TOKEN", _secret, "")
    upstream_base_url: str = _setting("UPSTREAM_BASE_URL", _url, DEFAULT_UPSTREAM)
    client_keys: str = _setting("CLIENT_KEYS", _choice("auto", "on", "off"), "auto")
    upstream_connect_timeout: float = _setting("UPSTREAM_CONNECT_TIMEOUT", _seconds, "10")
    upstream_read_timeout: float = _setting("UPSTREAM_READ_TIMEOUT", _seconds, "120")
    upstream_stream_idle_timeout: float = _setting("UPSTREAM_STREAM_IDLE_TIMEOUT", _seconds, "60")
    upstream_retries: int = _setting("UPSTREAM_RETRIES", _int(0), "2")
    upstream_rpm: int = _setting("UPSTREAM_RPM", _limit, "0")
    upstream_pool_size: int = _setting("UPSTREAM_POOL_SIZE", _int(1), "100")
    upstreams: tuple[Any, ...] = _setting("UPSTREAMS", _upstreams, "")
    upstream_fallbacks: int = _setting("UPSTREAM_FALLBACKS", _int(0), "2")
    upstream_breaker_failures: int = _setting("UPSTREAM_BREAKER_FAILURES", _int(1), "5")
    upstream_breaker_cooldown: float = _setting("UPSTREAM_BREAKER_COOLDOWN", _seconds, "10")
    upstream_models_ttl: float = _setting("UPSTREAM_MODELS_TTL", _seconds, "600")
    proxy: str = _setting("CHAT_PROXY", _proxy, "")
    https_proxy: str = _setting("HTTPS_PROXY", _proxy, "")
    http_proxy: str = _setting("HTTP_PROXY", _proxy, "")
    no_proxy: str = _setting("NO_PROXY", _text, "")
    backend: str = _setting("BACKEND", _choice("auto", "openai", "local"), "auto")
    local_model_path: str = _setting("LOCAL_MODEL_PATH", _path, "")
    local_model_id: str = _setting("LOCAL_MODEL_ID", _text, "smollm2-135m-instruct")
    local_max_queue: int = _setting("LOCAL_MAX_QUEUE", _int(0), "16")
    local_preload: bool = _setting("LOCAL_PRELOAD", _bool, "0")
    local_context_tokens: int = _setting("LOCAL_CONTEXT_TOKENS", _int(128), "2048")
    local_threads: int = _setting("LOCAL_THREADS", _int(0), "0")
    local_system_prompt: str = _setting("LOCAL_SYSTEM_PROMPT", _raw_text, LOCAL_SYSTEM_PROMPT)
    local_temperature: float = _setting("LOCAL_TEMPERATURE", _number(0.0, 2.0), "0.2")
    local_top_p: float = _setting("LOCAL_TOP_P", _number(0.0, 1.0), "0.9")
    local_repeat_penalty: float = _setting("LOCAL_REPEAT_PENALTY", _number(1.0, 2.0), "1.1")
    local_loop_guard: bool = _setting("LOCAL_LOOP_GUARD", _bool, "1")
    default_model: str = _setting("DEFAULT_MODEL", _text, "gpt-3.5-turbo")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", _int(1), "1048576")
    body_read_timeout: float = _setting("BODY_READ_TIMEOUT", _seconds, "30")
    ws_max_backlog: int = _setting("WS_MAX_BACKLOG", _int(1), "16")
    memory_max_entries: int = _setting("MEMORY_MAX_ENTRIES", _int(1), "100000")
    bot_desc: str = _setting("BOT_DESC", _raw_text, "You are a helpful assistant.")
    history_max_messages: int = _setting("HISTORY_MAX_MESSAGES", _int(1), "20")
    conversation_ttl: float = _setting("CONVERSATION_TTL", _seconds, "1800")
    chat_model: str = _setting("CHAT_MODEL", _text, "")
    chat_max_tokens: int | None = _setting("CHAT_MAXTOKENS", _optional_int(1, 1_000_000), "")
    chat_temperature: float | None = _setting("CHAT_TEMPERATURE", _optional_number(0, 2), "")
    chat_top_p: float | None = _setting("CHAT_TOPP", _optional_number(0, 1), "")
    chat_presence_penalty: float | None = _setting(
        "CHAT_PRESENCEPENALTY", _optional_number(-2, 2), ""
    )
    chat_frequency_penalty: float | None = _setting(
        "CHAT_FREQUENCYPENALTY", _optional_number(-2, 2), ""
    )
    store_url: str = _setting("STORE_URL", _store_url, "sqlite:///data/chatservice.db")
    max_context_messages: int = _setting("MAX_CONTEXT_MESSAGES", _int(1), "20")
    conversation_max_bytes: int = _setting("CONVERSATION_MAX_BYTES", _int(1024), "2097152")
    share_by_conversation_id: bool = _setting("SHARE_BY_CONVERSATION_ID", _bool, "1")
    completion_model: str = _setting("COMPLETION_MODEL", _text, "gpt-3.5-turbo-instruct")
    turbo_model: str = _setting("TURBO_MODEL", _text, "gpt-3.5-turbo")
    gpt4_model: str = _setting("GPT4_MODEL", _text, "gpt-4")
    auth_mode: str = _setting("AUTH_MODE", _choice("none", "simple", "normal", "keys"), "none")
    auth_token: Secret | None = _setting("AUTH_TOKEN", _secret, "")
    auth_replay_window: float = _setting("AUTH_REPLAY_WINDOW", _seconds, "86400")
    client_key_reserve_tokens: int = _setting("CLIENT_KEY_RESERVE_TOKENS", _int(1), "4096")
    prices: dict[str, tuple[float, float]] = _setting("PRICES", _prices, "")
    config_file: str = _setting("CONFIG_FILE", _path, "")
    log_level: str = _setting("LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info")
    log_prompts: bool = _setting("LOG_PROMPTS", _bool, "0")
    log_format: str = _setting("LOG_FORMAT", _choice("text", "json"), "text")
    log_dir: str = _setting("LOG_DIR", _path, "")
    log_retention_days: int = _setting("LOG_RETENTION_DAYS", _int(1), "14")
    graceful_timeout: float = _setting("GRACEFUL_TIMEOUT", _seconds, "30")
    cors_origins: tuple[str, ...] = _setting("CORS_ORIGINS", _list, "")
    playground: bool = _setting("PLAYGROUND", _bool, "1")
    allowed_models: tuple[str, ...] = _setting("ALLOWED_MODELS", _list, "")
    model_aliases: dict[str, str] = _setting("MODEL_ALIASES", _aliases, "")
    context_windows: dict[str, int] = _setting("CONTEXT_WINDOWS", _windows, "")
    trim_openai_face: bool = _setting("TRIM_OPENAI_FACE", _bool, "0")
    cache_url: str = _setting("CACHE_URL", _cache_url, "")
    cache_ttl: float = _setting("CACHE_TTL", _seconds, "3600")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = ".env",
        **overrides: Any,
    ) -> Settings:
        """Read settings: ``environ`` (default: ``os.environ``; app.py adds its command-line
        flags to it), then ``env_file``, then the TOML file CONFIG_FILE (empty:
        ``config.toml``, when present), then defaults.

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
        if values["auth_mode"] in ("simple", "normal") and values["auth_token"] is None:
            raise ConfigError(f"AUTH_TOKEN: required when AUTH_MODE is {values['auth_mode']}")
        return cls(**values)

    @property
    def accepts_client_keys(self) -> bool:
        """Whether a key a client brings (``Authorization: Bearer sk-...``, the ``api_key``
        field of the Docker ChatGPT API platform's face) is used for the upstream: CLIENT_KEYS
        on/off, or with ``auto`` only when an upstream other than OpenAI's API or a key
        (API_KEY, KEY_FILE) is configured.
        Otherwise the placeholder ``sk-xxx`` that tools insist on would reach OpenAI's API on a
        keyless install.
        """
        if self.client_keys != "auto":
            return self.client_keys == "on"
        return bool(self.upstream_base_url != DEFAULT_UPSTREAM or self.api_keys or self.key_file)

    @property
    def rate_limits(self) -> list[str]:
        """The per-client limits in flask-limiter's notation, e.g. ``["2/second", "5/minute"]``."""
        windows = (
            ("second", self.second_limit),
            ("minute", self.minute_limit),
            ("hour", self.hour_limit),
        )
        return [f"{amount}/{window}" for window, amount in windows if amount > 0]


#: Every setting, in declaration order (derived from :class:`Settings`, declared once there).
FIELDS: tuple[Field, ...] = tuple(
    Field(field.metadata["env"], field.name, field.metadata["parse"], field.metadata["default"])
    for field in dataclasses.fields(Settings)
)

#: Other names accepted for a variable, in priority order after the canonical one:
#: ChatGPT-API on gin's ``CHAT_`` variables, ``PROXY``, and the lower-case proxy variables of
#: curl and requests.
ALIASES: dict[str, tuple[str, ...]] = {
    # The shared state's first name, from when it held only the rate-limit counters.
    "SHARED_STATE_URL": ("RATELIMIT_STORAGE_URI",),
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
    names (``apikey`` for ``CHAT_APIKEY``), inside any table. Lists are joined with commas;
    a list of tables (``[[upstreams]]``) becomes JSON.
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
    prices = document.pop("prices", None)
    if prices is not None:
        values["PRICES"] = _prices_table(prices, path)
    windows = document.pop("context_windows", None)
    if windows is not None:
        values["CONTEXT_WINDOWS"] = _windows_value(windows)
    for key, value in _flatten(document):
        name = _config_name(key)
        if name is None:
            raise ConfigError(f"CONFIG_FILE: {path}: unknown setting {key!r}")
        values[name] = _config_value(value)
    return _resolve_aliases(values)


def _prices_table(table: Any, path: Path) -> str:
    """TOML ``[prices]`` (``"gpt-4o" = { input = 2.5, output = 10 }``) as PRICES' text."""
    items = []
    for model, price in table.items() if isinstance(table, dict) else [(None, None)]:
        if not isinstance(price, dict) or set(price) != {"input", "output"}:
            raise ConfigError(
                f"CONFIG_FILE: {path}: [prices] entries are model = {{ input = ..., output = ... }}"
            )
        items.append(f"{model}={price['input']}/{price['output']}")
    return ",".join(items)


def _windows_value(table: Any) -> str:
    """The ``[context_windows]`` table as CONTEXT_WINDOWS: ``"model" = tokens`` entries, and
    one sub-table per upstream (``[context_windows.<upstream>]``) for ``model@upstream``.
    """
    if not isinstance(table, dict):
        raise ConfigError("CONFIG_FILE: context_windows must be a table")
    items = []
    for name, value in table.items():
        if isinstance(value, dict):
            items += [f"{model}@{name}={tokens}" for model, tokens in value.items()]
        else:
            items.append(f"{name}={value}")
    return ",".join(items)


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
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        return json.dumps(value, default=str)  # [[upstreams]]: a list of tables
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)
