""".env.example documents exactly the variables of ``settings.FIELDS``, with valid defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from chatservice.settings import FIELDS, Field, Settings

ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"

#: Read by Settings (CHAT_LANG falls back to it) without being a field of its own.
EXTRA_NAMES = {"LANG"}

#: An assignment line, commented out (``# NAME=value``) or not (``NAME=value``).
ASSIGNMENT = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def assignments() -> list[tuple[int, str, str]]:
    """``(line index, name, raw value)`` of every assignment line of .env.example."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        match = ASSIGNMENT.match(line.strip())
        if match:
            found.append((index, match.group(1), match.group(2)))
    return found


def uncommented_values(tmp_path: Path) -> dict[str, str]:
    """The file's assignments with their ``#`` removed, parsed as a .env file would be."""
    path = tmp_path / ".env"
    path.write_text("".join(f"{name}={value}\n" for _, name, value in assignments()))
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def test_every_field_is_documented() -> None:
    names = [name for _, name, _ in assignments()]
    missing = [field.env for field in FIELDS if field.env not in names]
    assert not missing, f".env.example lacks {missing}"


def test_no_unknown_or_repeated_variables() -> None:
    names = [name for _, name, _ in assignments()]
    known = {field.env for field in FIELDS} | EXTRA_NAMES
    assert sorted(set(names) - known) == [], "variables .env.example names but FIELDS does not"
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert repeated == [], f"variables set more than once: {repeated}"


def test_every_assignment_is_commented_out() -> None:
    # An unedited copy of the file as .env must change nothing.
    assert dotenv_values(ENV_EXAMPLE) == {}


def test_every_variable_has_a_description_above() -> None:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, name, _ in assignments():
        above = lines[index - 1].strip() if index else ""
        assert above.startswith("#") and above.strip("# =") and not ASSIGNMENT.match(above), (
            f"{name} has no comment line directly above it"
        )


def test_documented_defaults_are_valid(tmp_path: Path) -> None:
    Settings.from_env(uncommented_values(tmp_path), env_file=None)


@pytest.mark.parametrize("field", FIELDS, ids=lambda field: field.env)
def test_documented_default_is_the_real_default(field: Field, tmp_path: Path) -> None:
    documented = uncommented_values(tmp_path)[field.env]
    assert field.parse(documented) == field.parse(field.default), (
        f"{field.env}: .env.example shows {documented!r}, the default is {field.default!r}"
    )
