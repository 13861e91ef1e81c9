"""Configuration entry point: typed settings from the environment, then ``.env``, then defaults.

The settings themselves are declared in :mod:`chatservice.settings`; this module is the
top-level name operators and scripts import (``from config import load_settings``).
"""

from __future__ import annotations

from chatservice.settings import FIELDS, ConfigError, Secret, Settings

__all__ = ["FIELDS", "ConfigError", "Secret", "Settings", "load_settings"]


def load_settings() -> Settings:
    """Settings from ``os.environ`` and ``./.env``; raises :class:`ConfigError` if invalid."""
    return Settings.from_env()
