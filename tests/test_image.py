"""The Docker image builds and runs as the README says (marker ``image``: minutes, not run by
``make test``; ``.ci/run`` runs it after the suite with ``pytest -m image``).

Built with Debian's docker.io (BuildKit, no ``# syntax=`` frontend); when the Dockerfile's
pinned base cannot be pulled, from a local Debian base made by deploy/make-base-image.sh.
Every container publishes its port on 127.0.0.1 only, and the embedded model answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.image

LOCAL_BASE = "chatservice-base:bookworm"
#: The image's health check runs every 2 s here instead of 30 s; the command is the image's.
FAST_HEALTH = ["--health-interval=2s", "--health-start-period=60s"]


def docker_binary() -> str:
    # Debian's docker.io client first: it speaks BuildKit to its daemon without a buildx plugin.
    for path in ("/usr/bin/docker", shutil.which("docker")):
        if path and os.path.exists(path):
            return path
    raise AssertionError("docker is not installed (.ci/run installs Debian's docker.io)")


DOCKER = docker_binary()


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr[-3000:]}")
    return result


def pinned_base() -> str:
    match = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text())
    assert match
    return match.group(1)


def base_build_args() -> list[str]:
    """``--build-arg PYTHON_IMAGE=...`` when the pinned base is neither present nor pullable."""
    if os.environ.get("CHATSERVICE_BASE_IMAGE"):
        return ["--build-arg", f"PYTHON_IMAGE={os.environ['CHATSERVICE_BASE_IMAGE']}"]
    base = pinned_base()
    if docker("image", "inspect", base, check=False).returncode == 0:
        return []
    with contextlib.suppress(subprocess.TimeoutExpired):
        if docker("pull", base, timeout=300, check=False).returncode == 0:
            return []
    if docker("image", "inspect", LOCAL_BASE, check=False).returncode != 0:
        subprocess.run(
            [str(ROOT / "deploy" / "make-base-image.sh"), LOCAL_BASE],
            env={**os.environ, "DOCKER": DOCKER},
            capture_output=True,
            timeout=1800,
            check=True,
        )
    return ["--build-arg", f"PYTHON_IMAGE={LOCAL_BASE}"]


@pytest.fixture(scope="module")
def image() -> str:
    tag = "chatservice:image-test"
    docker("info", timeout=30)
    docker("build", *base_build_args(), "-t", tag, str(ROOT), timeout=3600)
    return tag


class Containers:
    """Containers and volumes made by one test, all removed after it."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []
        self.volumes: list[str] = []

    def volume(self) -> str:
        name = f"chatservice-test-{uuid.uuid4().hex[:12]}"
        docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(self, *options: str, command: tuple[str, ...] = ()) -> tuple[str, str]:
        """Start a container; return its name and the URL of its published port 5000 (or the
        port ``command`` names)."""
        name = f"chatservice-test-{uuid.uuid4().hex[:12]}"
        port = free_port()
        inner = next((command[i + 1] for i, arg in enumerate(command) if arg == "--port"), "5000")
        docker(
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:{inner}",
            *FAST_HEALTH,
            *options,
            self.image,
            *command,
        )
        self.names.append(name)
        return name, f"http://127.0.0.1:{port}"

    def remove(self) -> None:
        for name in self.names:
            docker("rm", "-f", "-v", name, check=False)
        for volume in self.volumes:
            docker("volume", "rm", "-f", volume, check=False)


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    made = Containers(image)
    yield made
    made.remove()


def state(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", "-f", "{{json .State}}", name).stdout)


def logs(name: str) -> str:
    result = docker("logs", name, check=False)
    return result.stdout + result.stderr


def wait_healthy(name: str, url: str, timeout: float = 180) -> None:
    """Until Docker reports the image's HEALTHCHECK healthy and /healthz answers."""
    deadline = time.monotonic() + timeout
    while True:
        current = state(name)
        assert current["Running"], f"container exited {current['ExitCode']}: {logs(name)}"
        if current.get("Health", {}).get("Status") == "healthy":
            try:
                answer = requests.get(url + "/healthz", timeout=5).json()
            except requests.RequestException as exc:  # the container's log says why
                raise AssertionError(f"healthy, then {exc!r}: {logs(name)}") from exc
            assert answer == {"status": "ok"}
            return
        assert time.monotonic() < deadline, f"not healthy: {current.get('Health')} {logs(name)}"
        time.sleep(0.5)


def stop_cleanly(name: str) -> None:
    docker("stop", "-t", "35", name, timeout=60)
    current = state(name)
    assert current["ExitCode"] == 0, logs(name)
    assert "Traceback" not in logs(name)


def ask_embedded(url: str) -> dict[str, Any]:
    response = requests.post(
        url + "/api", json={"user_content": "Say hello.", "max_tokens": 8}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_readme_command_serves_as_a_non_root_user_and_stops_cleanly(containers):
    # The README's `docker run -p 5000:5000 -e API_KEY=sk-... chatservice`: no volume, no
    # other setting. It must stay up (it once exited at once, unable to write its store).
    name, url = containers.run("-e", "API_KEY=sk-test-not-a-real-key-0001")
    wait_healthy(name, url)
    assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
    assert docker("inspect", "-f", "{{.Config.User}}", name).stdout.strip() == "10001:10001"
    # The default store is in the data directory, owned by the service user.
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    listing = docker("exec", name, "stat", "-c", "%u %a %n", "/app/data/chatservice.db").stdout
    assert listing.startswith("10001 ")
    stop_cleanly(name)


def test_embedded_model_answers_and_a_conversation_survives_a_restart_on_a_volume(containers):
    volume = containers.volume()
    name, url = containers.run("-v", f"{volume}:/app/data")
    wait_healthy(name, url)
    answer = ask_embedded(url)
    assert answer["code"] == 200 and answer["data"]["response"].strip()
    assert answer["data"]["model"] == "smollm2-135m-instruct"

    cid = requests.post(url + "/api/chatgpt/createTurbo", data="Be terse.", timeout=30).text
    first = requests.post(
        url + "/api/chatgpt/chat", data="Name a color.", headers={"conversation": cid}, timeout=120
    )
    assert first.status_code == 200 and first.text.strip()
    stop_cleanly(name)

    # A new container on the same volume continues the conversation.
    again, url = containers.run("-v", f"{volume}:/app/data")
    wait_healthy(again, url)
    history = requests.post(
        url + "/api/chatgpt/contextArray", headers={"conversation": cid}, timeout=30
    )
    assert history.status_code == 200, history.text
    assert "Name a color." in history.text and first.text.strip() in history.text
    second = requests.post(
        url + "/api/chatgpt/chat", data="Another.", headers={"conversation": cid}, timeout=120
    )
    assert second.status_code == 200
    stop_cleanly(again)


def test_an_arbitrary_uid_in_group_0_can_write_store_logs_and_metrics(containers):
    # OpenShift runs images under a random UID in group 0.
    volume = containers.volume()
    name, url = containers.run(
        "--user",
        "123456:0",
        "-v",
        f"{volume}:/app/data",
        "-e",
        "WORKERS=2",
        "-e",
        "LOG_DIR=/app/data/logs",
    )
    wait_healthy(name, url)
    ask_embedded(url)
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    assert "chatservice_requests" in requests.get(url + "/metrics", timeout=10).text
    files = docker("exec", name, "find", "/app/data", "-type", "f").stdout.split()
    assert "/app/data/chatservice.db" in files
    assert any(path.startswith("/app/data/logs/") for path in files), files
    stop_cleanly(name)


def test_health_check_follows_a_port_given_on_the_command_line(containers):
    name, url = containers.run(command=("python3", "app.py", "--port", "8000"))
    wait_healthy(name, url)
    stop_cleanly(name)


def test_image_holds_one_copy_of_llama_cpp_libraries_and_no_apt_lists(image):
    script = (
        "find / -xdev \\( -name 'libllama*.so*' -o -name 'libggml*.so*' \\) -type f;"
        " ls /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$' || true"
    )
    found = docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout.split()
    libraries = [path for path in found if path.startswith("/")]
    assert libraries, found
    assert all("/site-packages/llama_cpp/lib/" in path for path in libraries), libraries
    names = [os.path.basename(path) for path in libraries]
    assert len(names) == len(set(names)), libraries
    assert [entry for entry in found if not entry.startswith("/")] == []
