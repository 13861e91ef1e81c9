"""Entry point: ``python3 app.py`` serves the app with gunicorn and gevent workers.

``gunicorn -k gevent 'app:app'`` works too: ``app`` is built on first access (PEP 562
module ``__getattr__``), in the worker after gevent has patched the standard library, so
importing this module creates nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from config import ConfigError, Settings

log = logging.getLogger("chatservice.server")
_app: Any = None


class Server(BaseApplication):
    """gunicorn with gevent workers, bound to HOST:PORT, WORKERS processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        """Apply our settings to gunicorn's (called by gunicorn)."""
        options = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "worker_class": "gevent",
            # Streams and local generation can outlast gunicorn's 30 s default.
            "timeout": max(60, int(self.settings.upstream_read_timeout) + 30),
            "graceful_timeout": 30,
            "accesslog": None,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the app in the worker (called by gunicorn after the fork)."""
        from chatservice import create_app

        return create_app(self.settings)


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        from chatservice import create_app

        try:
            _app = create_app()
        except ConfigError as exc:
            log.error("invalid configuration: %s", exc)
            # gunicorn stops the whole server when a worker exits with this status.
            raise SystemExit(3) from None
    return _app


#: Command-line flags for the common settings: flag -> environment variable it overrides.
FLAGS = {
    "--host": ("HOST", "address to listen on (default 0.0.0.0)"),
    "--port": ("PORT", "port to listen on (default 5000)"),
    "--route": ("ROUTE", "path prefix of every face (default api; empty for /)"),
    "--workers": ("WORKERS", "gunicorn gevent worker processes (default 1)"),
    "--config": ("CONFIG_FILE", "TOML settings file (default config.toml when present)"),
}


def parse_args(argv: list[str] | None = None) -> dict[str, str]:
    """The environment overrides given on the command line, ``{"PORT": "8080", ...}``."""
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="chatservice: a self-hosted ChatGPT API (gunicorn with gevent workers).",
        epilog="Every setting can also come from the environment, a .env file or the TOML "
        "file; flags win over all of them. .env.example lists every variable.",
    )
    for flag, (variable, text) in FLAGS.items():
        parser.add_argument(flag, dest=variable, metavar=variable, help=text)
    args = parser.parse_args(argv)
    return {name: value for name, value in vars(args).items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    """Run the server until it is stopped; exit status 2 on an invalid setting."""
    overrides = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = Settings.from_env({**os.environ, **overrides})
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    Server(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
