"""Configuration entry point: typed settings from, first wins, ``python3 app.py``'s
command-line flags, the environment, a ``.env`` file, the TOML file CONFIG_FILE (default
``config.toml`` when present), then the declared defaults.

The settings themselves are declared once, in :mod:`chatservice.settings` (its docstring
details each source); this module is the top-level name operators and scripts import
(``from config import load_settings``).
"""

from __future__ import annotations

from chatservice.settings import FIELDS, ConfigError, Secret, Settings

__all__ = ["FIELDS", "ConfigError", "Secret", "Settings", "load_settings"]


def load_settings() -> Settings:
    """Settings from ``os.environ``, ``./.env`` and the TOML file (no command-line flags: those
    are app.py's); raises :class:`ConfigError` if invalid."""
    return Settings.from_env()
