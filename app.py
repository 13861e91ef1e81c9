"""Entry point: ``python3 app.py`` serves the app with gunicorn and gevent workers.

``gunicorn -k gevent 'app:app'`` works too: ``app`` is built on first access (PEP 562
module ``__getattr__``), in the worker after gevent has patched the standard library, so
importing this module creates nothing.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from chatservice import logs
from config import ConfigError, Settings

log = logging.getLogger("chatservice.server")
_app: Any = None


class Server(BaseApplication):
    """gunicorn with gevent workers, bound to HOST:PORT, WORKERS processes.

    The master also rotates the log files when LOG_DIR is set (:mod:`chatservice.logs`: every
    process appends its own lines, the master alone rotates) and reloads the configuration on
    SIGHUP (:meth:`refresh_settings`, as ChatGPT-API on gin watched its config file).

    :param settings: the configuration the first workers use.
    :param overrides: the command-line flags' variables, which keep winning on a reload.
    """

    def __init__(self, settings: Settings, overrides: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.overrides = dict(overrides or {})
        super().__init__()

    def load_config(self) -> None:
        """Apply our settings to gunicorn's (called by gunicorn, again on each reload)."""
        options = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            # gunicorn's gevent worker, with JSON instead of HTML for the requests gunicorn
            # refuses itself (400, 414, 431).
            "worker_class": "chatservice.worker.JsonErrorWorker",
            # gunicorn's default of 1,000 would queue the 1,001st open stream of a worker.
            "worker_connections": self.settings.worker_connections,
            # Streams and local generation can outlast gunicorn's 30 s default.
            "timeout": max(60, int(self.settings.upstream_read_timeout) + 30),
            # gunicorn counts whole seconds: round up, never cut a stream's allowance short.
            "graceful_timeout": math.ceil(self.settings.graceful_timeout),
            "loglevel": self.settings.log_level,
            "accesslog": None,
            # gunicorn's control socket sits at one path per user (~/.gunicorn): several
            # servers on a machine would fight over it, and nothing here uses it.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)
        share_metrics(self.cfg, self.settings.workers)  # WORKERS>1: see share_metrics

    def load(self) -> Any:
        """Build the app in the worker (called by gunicorn after the fork)."""
        from chatservice import create_app

        try:
            return create_app(self.settings)
        except ConfigError as exc:  # e.g. a STORE_URL that became unwritable since start-up
            log.error("invalid configuration: %s", exc)
            raise SystemExit(3) from None  # gunicorn stops: "Worker failed to boot"

    def refresh_settings(self) -> bool:
        """Re-read the configuration (environment, ``.env``, TOML file, command-line flags)
        for the workers a reload starts; apply the new log settings in the master.

        Returns ``False`` when the new configuration is invalid: one error line names the
        problem and everything stays as it was, workers included.
        """
        try:
            settings = Settings.from_env({**os.environ, **self.overrides})
            logs.apply_settings(settings)
        except ConfigError as exc:
            log.error("configuration reload refused, the running one stays in force: %s", exc)
            return False
        self.settings = settings
        log.info("configuration reloaded; new workers use it")
        return True

    def run(self) -> None:
        """Serve until stopped (gunicorn's ``run`` with :class:`ReloadingArbiter`)."""
        try:
            ReloadingArbiter(self).run()
        except RuntimeError as exc:
            log.error("gunicorn stopped: %s", exc)
            sys.exit(1)


class ReloadingArbiter(Arbiter):
    """gunicorn's arbiter, refusing a SIGHUP reload whose configuration is invalid.

    gunicorn's own reload always replaces the workers; when :meth:`Server.refresh_settings`
    refuses the new configuration nothing happens instead, so the running workers keep their
    Settings and their in-memory state (rate-limit counters, conversations in memory://).
    An accepted reload is gunicorn's: new workers start with the new settings, the old ones
    get SIGTERM and finish their in-flight requests and streams within GRACEFUL_TIMEOUT.
    """

    app: Server

    def reload(self) -> None:
        """Reload if the new configuration is valid (called by gunicorn on SIGHUP)."""
        if self.app.refresh_settings():
            super().reload()


# --- /metrics across workers: prometheus-client's multi-process mode ---------------
_metrics_dir: str | None = None


def share_metrics(cfg: Any, workers: int) -> None:
    """With several workers, make every worker's metrics visible from any one of them.

    In the master, before the workers fork: a fresh private directory (mode 0700, so no stale
    file of an earlier run is merged in) becomes PROMETHEUS_MULTIPROC_DIR, which the workers
    inherit; gunicorn's ``child_exit`` hook marks a dead worker's live gauges gone and
    ``on_exit`` removes the directory. Called from ``load_config``, so a SIGHUP reload keeps
    the hooks (and the directory). prometheus-client is imported in the master only once a
    worker exits, after the variable is set, as its multi-process mode requires.
    """
    global _metrics_dir
    if workers < 2 and _metrics_dir is None:  # a reload down to one worker keeps the hooks
        return
    import shutil
    import tempfile

    if _metrics_dir is None:
        _metrics_dir = tempfile.mkdtemp(prefix="chatservice-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    path = _metrics_dir
    previous_child_exit, previous_on_exit = cfg.child_exit, cfg.on_exit

    def child_exit(server: Any, worker: Any) -> None:
        previous_child_exit(server, worker)
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)

    def on_exit(server: Any) -> None:
        previous_on_exit(server)
        shutil.rmtree(path, ignore_errors=True)

    cfg.set("child_exit", child_exit)
    cfg.set("on_exit", on_exit)


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
        epilog="'app.py keys --help' manages client API keys (AUTH_MODE=keys). "
        "Every setting can also come from the environment, a .env file or the TOML "
        "file; flags win over all of them. .env.example lists every variable.",
    )
    for flag, (variable, text) in FLAGS.items():
        parser.add_argument(flag, dest=variable, metavar=variable, help=text)
    args = parser.parse_args(argv)
    return {name: value for name, value in vars(args).items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    """Run the server until it is stopped; exit status 2 on an invalid setting.

    ``app.py keys ...`` manages client API keys instead (:mod:`chatservice.keycli`).
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        from chatservice import keycli

        return keycli.main(argv[1:])
    overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=logs.TEXT_FORMAT)
    try:
        settings = Settings.from_env({**os.environ, **overrides})
        logs.apply_settings(settings)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    try:
        Server(settings, overrides).run()
    finally:
        # The master stops rotating and closes the log files; a worker (gunicorn's fork
        # returns here when it exits) closes its own.
        logs.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
