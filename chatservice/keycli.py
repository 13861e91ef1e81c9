"""``python3 app.py keys ...``: manage the client keys of AUTH_MODE=keys from a shell.

Works on the store of the current settings (STORE_URL, from the environment, ``.env`` or the
TOML file), like the admin API, so a running service sees the change on its next request.

- ``keys create --name ci-bot [--models 'gpt-4o*'] [--rpm N] [--tpm N] [--budget-tokens N]
  [--daily-budget-tokens N] [--monthly-budget-tokens N] [--expires 2027-01-31]``: prints the
  new key (the only time it is shown) on the first line, then its settings as JSON.
- ``keys list``: every key, masked, as JSON lines.
- ``keys update <id or name> [same options] [--enable|--disable] [--new-name NAME]``.
- ``keys disable <id or name>``, ``keys enable <id or name>``, ``keys delete <id or name>``.

Exit status 0, or 1 with a one-line message on stderr (a bad value, an unknown key, a taken
name, the store unavailable), 2 for a bad command line (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from chatservice import clientkeys
from chatservice.budgets import ClientKeys
from chatservice.errors import ServiceError
from chatservice.i18n import Catalogs
from chatservice.keystore import create_key_store
from chatservice.settings import ConfigError, Settings

OPTIONS = {
    "--models": ("models", str, "model names or patterns, comma-separated ('gpt-4o*')"),
    "--rpm": ("rpm", int, "requests per minute (0 = no limit)"),
    "--tpm": ("tpm", int, "tokens per minute (0 = no limit)"),
    "--budget-tokens": ("budget_tokens", int, "tokens in total"),
    "--daily-budget-tokens": ("daily_budget_tokens", int, "tokens per UTC day"),
    "--monthly-budget-tokens": ("monthly_budget_tokens", int, "tokens per UTC month"),
    "--expires": ("expires_at", str, "expiry: ISO 8601 date or time (UTC)"),
}


def parser() -> argparse.ArgumentParser:
    """The ``keys`` command line."""
    root = argparse.ArgumentParser(prog="app.py keys", description="Manage client API keys.")
    commands = root.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    update = commands.add_parser("update", help="change a key's settings")
    update.add_argument("ref", metavar="ID_OR_NAME")
    update.add_argument("--new-name", dest="name")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    for sub in (create, update):
        for flag, (dest, kind, text) in OPTIONS.items():
            sub.add_argument(flag, dest=dest, type=kind, help=text)
    commands.add_parser("list", help="list every key, masked")
    for name in ("enable", "disable", "delete"):
        commands.add_parser(name, help=f"{name} a key").add_argument("ref", metavar="ID_OR_NAME")
    return root


def main(argv: list[str], environ: dict[str, str] | None = None) -> int:
    """Run one ``keys`` command; the exit status."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env(dict(os.environ) if environ is None else environ)
        keys = ClientKeys(create_key_store(settings.store_url), settings)
        return _run(keys, args)
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
    except ServiceError as err:
        message = Catalogs.load().translate(err.key, "en", **err.params)
        print(f"error: {message}", file=sys.stderr)
    return 1


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    names = ("name", "enabled", *(dest for dest, _, _ in OPTIONS.values()))
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "models" in given:
        given["models"] = [item.strip() for item in given["models"].split(",")]
    if "expires_at" in given:
        given["expires_at"] = clientkeys.parse_time(given["expires_at"])
    return clientkeys.parse_settings(given, creating=args.command == "create")


def _show(keys: ClientKeys, record: clientkeys.KeyRecord) -> None:
    print(json.dumps({**record.public(), "spent": keys.spent(record)}, ensure_ascii=False))


def _run(keys: ClientKeys, args: argparse.Namespace) -> int:
    if args.command == "create":
        key, record = keys.create(_fields(args))
        print(key)
        _show(keys, record)
    elif args.command == "list":
        for record in keys.all():
            _show(keys, record)
    elif args.command == "update":
        _show(keys, keys.update(args.ref, _fields(args)))
    elif args.command in ("enable", "disable"):
        _show(keys, keys.update(args.ref, {"enabled": args.command == "enable"}))
    else:
        record = keys.delete(args.ref)
        print(f"deleted {record.id} ({record.name})")
    return 0
