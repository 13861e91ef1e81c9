"""Message catalogs and language negotiation.

Catalogs are JSON files under the project's ``i18n/`` folder, one per language in
:data:`LANGUAGES` (the four languages the Docker ChatGPT API platform's ``LANG`` offers), each
mapping a stable message key to a ``str.format`` template. The language of a request is
chosen, in order, from the ``lang`` query parameter or body field, ``Accept-Language``, the
configured default (``CHAT_LANG``/``LANG``), then English.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

LANGUAGES: tuple[str, ...] = ("en", "zh_CN", "zh_TW", "ru")
FALLBACK = "en"
CATALOG_DIR = Path(__file__).resolve().parent.parent / "i18n"

_TRADITIONAL = {"tw", "hk", "mo", "hant"}
log = logging.getLogger(__name__)


def normalize_language(tag: str | None) -> str | None:
    """Map a language tag or POSIX locale to one of :data:`LANGUAGES`, or ``None`` if unknown.

    Understands BCP 47 (``zh-Hant-TW``, ``ru-RU``) and POSIX forms (``zh_CN.UTF-8``,
    ``ru_RU.UTF-8@euro``); ``C``/``POSIX`` locales are ``None`` (no preference).
    """
    if not tag:
        return None
    value = tag.strip().split(".", 1)[0].split("@", 1)[0].replace("-", "_").lower()
    parts = [part for part in value.split("_") if part]
    if not parts:
        return None
    primary = parts[0]
    if primary == "zh":
        return "zh_TW" if _TRADITIONAL.intersection(parts[1:]) else "zh_CN"
    if primary in ("en", "ru"):
        return primary
    return None


def negotiate(candidates: Iterable[str | None], accept: Iterable[str], default: str) -> str:
    """Pick the response language.

    ``candidates`` are explicit choices (query parameter, body field) in priority order;
    ``accept`` is the ``Accept-Language`` tags in quality order; ``default`` is the setting.
    """
    for tag in candidates:
        lang = normalize_language(tag)
        if lang:
            return lang
    for tag in accept:
        lang = normalize_language(tag)
        if lang:
            return lang
    return default if default in LANGUAGES else FALLBACK


class Catalogs:
    """The loaded catalogs: ``{language: {key: template}}``.

    :meth:`translate` never raises: a missing key or a bad template falls back to English,
    then to the key itself, and is logged (a test keeps the catalogs complete).
    """

    def __init__(self, catalogs: Mapping[str, Mapping[str, str]]) -> None:
        self._catalogs = {lang: dict(messages) for lang, messages in catalogs.items()}

    @classmethod
    def load(cls, directory: Path = CATALOG_DIR) -> Catalogs:
        """Read ``<directory>/<lang>.json`` for each language; raises OSError or ValueError."""
        catalogs = {}
        for lang in LANGUAGES:
            with open(directory / f"{lang}.json", encoding="utf-8") as fh:
                catalogs[lang] = json.load(fh)
        return cls(catalogs)

    def translate(self, key: str, lang: str, **params: object) -> str:
        """The message for ``key`` in ``lang`` with ``params`` filled in."""
        for candidate in (lang, FALLBACK):
            template = self._catalogs.get(candidate, {}).get(key)
            if template is None:
                continue
            try:
                return template.format(**params)
            except (KeyError, IndexError, ValueError):
                log.error("catalog %s: bad template for %s", candidate, key)
        log.error("no message for key %s", key)
        return key
