"""scripts/system-deps: the Debian packages `make run`, `make test` and CI need beyond pip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "system-deps"
#: What the script itself runs, plus what it checks for; apt-get and sudo are left out, so a
#: missing package can only be reported.
TOOLS = (
    "sh",
    "id",
    "python3",
    "make",
    "cmake",
    "g++",
    "redis-server",
    "chromium",
    "nginx",
    "systemd-analyze",
)


def path_with(tmp_path: Path, tools: tuple[str, ...]) -> str:
    """A PATH of one directory holding links to ``tools`` (those this machine has)."""
    bin_dir = tmp_path / f"bin{len(list(tmp_path.iterdir()))}"
    bin_dir.mkdir()
    for tool in tools:
        # This interpreter: a pyenv shim on PATH would need pyenv's own environment.
        found = sys._base_executable if tool == "python3" else shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def run(target: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), target],
        env={"PATH": path, "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nothing_missing_is_silent(tmp_path):
    done = run("test", path_with(tmp_path, TOOLS))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_missing_packages_stop_at_once_with_one_line(tmp_path):
    lacking = tuple(t for t in TOOLS if t not in ("redis-server", "chromium", "cmake"))
    done = run("test", path_with(tmp_path, lacking))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "missing Debian packages: cmake redis-server chromium; "
        "install them with: sudo apt-get install -y cmake redis-server chromium\n"
    )


def test_running_needs_only_the_build_tools(tmp_path):
    lacking = tuple(t for t in TOOLS if t not in ("redis-server", "chromium"))
    assert run("run", path_with(tmp_path, lacking)).returncode == 0
    done = run("run", path_with(tmp_path, tuple(t for t in lacking if t != "g++")))
    assert done.returncode == 1
    assert done.stderr.endswith("install them with: sudo apt-get install -y g++\n")
