"""The shipped deployment files parse, and every variable they set is a setting of the service.

deploy/compose.yaml is read with PyYAML; deploy/chatservice.service with configparser and
with systemd's own parser (``systemd-analyze verify``, which .ci/run installs). The Dockerfile
is checked for what offline builds and the image's users rely on; building and running it is
tests/test_image.py's job.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, SETTING_NAMES

DEPLOY = ROOT / "deploy"
#: Variables the deployment files set that are not the service's but its runtime's.
NOT_SETTINGS: set[str] = set()


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_redis_two_instances_and_nginx():
    services = compose()["services"]
    assert set(services) == {"redis", "chatservice-1", "chatservice-2", "nginx"}
    # Redis keeps its data in a named volume, with the append-only file on.
    assert any(volume.startswith("redis-data:") for volume in services["redis"]["volumes"])
    assert "redis-data" in compose()["volumes"]
    assert "--appendonly" in services["redis"]["command"]
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == {"chatservice-1", "chatservice-2"}
    # The upstream block names the two instances by their compose service names.
    conf = (DEPLOY / "nginx.conf").read_text()
    for name in ("chatservice-1", "chatservice-2"):
        assert f"server {name}:5000;" in conf


def test_compose_instances_share_redis_and_check_readiness():
    services = compose()["services"]
    for name in ("chatservice-1", "chatservice-2"):
        service = services[name]
        assert service["image"] == "chatservice"
        env = service["environment"]
        assert env["STORE_URL"].startswith("redis://redis:6379")
        assert env["SHARED_STATE_URL"].startswith("redis://redis:6379")
        assert env["TRUSTED_PROXIES"] == "1"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_sets_only_real_settings():
    for name, service in compose()["services"].items():
        if not name.startswith("chatservice"):
            continue
        unknown = set(service["environment"]) - SETTING_NAMES - NOT_SETTINGS
        assert not unknown, f"{name} sets variables the service does not read: {unknown}"


def unit() -> tuple[configparser.ConfigParser, dict[str, list[str]]]:
    """The unit parsed (last value of each key) and every ``Environment=`` assignment."""
    text = (DEPLOY / "chatservice.service").read_text()
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    environment: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            environment.setdefault(name, []).append(value)
    return parser, environment


def test_systemd_unit_runs_app_py_as_a_user_and_reloads_with_sighup():
    parser, environment = unit()
    service = parser["Service"]
    assert service["ExecStart"].endswith("python3 app.py")
    assert service["User"] == "chatservice"
    assert service["EnvironmentFile"].startswith("/")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    # Longer than the default GRACEFUL_TIMEOUT (30 s), so streams in flight finish.
    assert int(service["TimeoutStopSec"]) > 30
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    # What the service writes is outside the read-only code directory.
    assert environment["STORE_URL"] == ["sqlite:////var/lib/chatservice/chatservice.db"]
    assert service["StateDirectory"] == "chatservice"


def test_systemd_unit_sets_only_real_settings():
    _, environment = unit()
    unknown = set(environment) - SETTING_NAMES - NOT_SETTINGS
    assert not unknown, f"the unit sets variables the service does not read: {unknown}"


def test_systemd_accepts_the_unit(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (.ci/run installs Debian's systemd)"
    # The shipped paths point at an installation; the copy points at this checkout.
    text = (DEPLOY / "chatservice.service").read_text()
    env_file = tmp_path / "chatservice.env"
    env_file.write_text("")
    text = text.replace("/opt/chatservice/.venv/bin/python3", str(Path(sys.executable).resolve()))
    text = text.replace("WorkingDirectory=/opt/chatservice", f"WorkingDirectory={ROOT}")
    text = text.replace("/etc/chatservice/chatservice.env", str(env_file))
    copy = tmp_path / "chatservice.service"
    copy.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys and bad values; it names them on stderr.
    problems = [line for line in result.stderr.splitlines() if "chatservice.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_nginx_conf_names_its_service_settings():
    conf = (DEPLOY / "nginx.conf").read_text()
    named = set(re.findall(r"\b([A-Z][A-Z_]{3,})=", conf))
    assert {"TRUSTED_PROXIES", "MAX_BODY_BYTES", "STORE_URL"} <= named
    assert named <= SETTING_NAMES
    # client_max_body_size is MAX_BODY_BYTES's default, 1 MiB.
    from chatservice.settings import FIELDS

    default = next(field.default for field in FIELDS if field.env == "MAX_BODY_BYTES")
    assert int(default) == 1024 * 1024 and "client_max_body_size 1m;" in conf


def test_dockerfile_builds_offline_and_pins_its_base():
    text = (ROOT / "Dockerfile").read_text()
    # A "# syntax=" directive would fetch a frontend image from a registry on every build.
    assert not re.search(r"(?im)^#\s*syntax\s*=", text)
    default_base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert default_base and re.search(r"@sha256:[0-9a-f]{64}$", default_base.group(1))
    # Every apt-get install cleans its caches and lists in the same layer.
    for run in re.findall(r"(?ms)^RUN (.*?)(?<!\\)\n", text):
        if "apt-get install" in run:
            assert "apt-get clean" in run and "rm -rf /var/lib/apt/lists/*" in run, run
    assert 'VOLUME ["/app/data"]' in text
    assert re.search(r"(?m)^USER 10001:10001$", text)
    assert "deploy/healthcheck.py" in text


def test_dockerignore_sends_the_health_check_but_not_the_rest_of_deploy():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "deploy/" in lines and "!deploy/healthcheck.py" in lines
