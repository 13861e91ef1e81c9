"""Process handling shared by the benchmark (bench/run.py) and the test suite: free ports,
/proc readings (children, resident memory, CPU time), processes started in their own process
groups and stopped as a whole, and starting ``python3 app.py`` until its ``/healthz`` answers.

Linux only (it reads /proc). Nothing here imports the service or a third-party library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A process did not start, exited early or failed a check (the message says which)."""


def raise_open_files(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str | None:
    """Path of an executable on PATH or in the virtualenv, or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


# --- /proc readings ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    for child in children(pid):
        found.extend(descendants(child))
    return found


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of ``pid`` so far: ``/proc/<pid>/stat``'s utime
    and stime, ``(0, 0)`` when it is gone.

    The kernel charges a tick to the process it interrupts, so the system part includes
    softirq work done in the process's context: on loopback, a ``send`` runs much of the
    receiving socket's TCP processing too."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far (0 when it is gone)."""
    return sum(cpu_times(pid))


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used so far (every core, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def machine_softirq_seconds() -> float:
    """CPU seconds the machine spent in softirqs so far (every core, /proc/stat): the
    kernel's network receive processing, whichever process it was charged to."""
    return int(Path("/proc/stat").read_text().splitlines()[0].split()[7]) / CLK_TCK


class CpuMeter:
    """CPU used over a window by named process trees, by everything else, and in total.

    ``others`` is the machine's busy time minus ours: other developers' test suites, say;
    ``machine_softirq`` the part of the machine's time spent in softirqs (see
    :func:`machine_softirq_seconds`).
    Processes that end inside the window report their CPU through :meth:`add`. For the
    ``worker``, ``<name>_runqueue_wait`` is the share of the window its main thread (the gevent
    hub) was ready to run but waiting for a CPU (``/proc/<pid>/schedstat``). For each name in
    ``split``, ``<name>_user`` and ``<name>_system`` give its cores in user and in system
    (kernel) time (see :func:`cpu_times`); they add up to ``<name>``.
    """

    def __init__(
        self, pids: dict[str, int], reaped_children: bool = False, split: tuple[str, ...] = ()
    ) -> None:
        self.pids = dict(pids)
        self.split = [name for name in split if name in self.pids]
        self.extra: dict[str, float] = {}
        # For a window that ends after every child was waited for: their CPU, all of it.
        self.reaped = _children_cpu() if reaped_children else None
        self.started = time.monotonic()
        self.machine = machine_busy_seconds()
        self.softirq = machine_softirq_seconds()
        self.before_split = {name: self._tree_times(name) for name in self.split}
        self.before = {name: self._tree(name, pid) for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait(pid) for name, pid in self.pids.items()}

    @staticmethod
    def _tree(name: str, pid: int) -> float:
        # The harness's own process only: its tree holds every other process measured.
        if name == "harness":
            return cpu_seconds(pid)
        return sum(cpu_seconds(p) for p in descendants(pid))

    def _tree_times(self, name: str) -> tuple[float, float]:
        times = [cpu_times(p) for p in descendants(self.pids[name])]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of CPU of a process that already ended (wrk)."""
        self.extra[name] = self.extra.get(name, 0.0) + seconds

    def stop(self) -> dict[str, float]:
        """Cores used on average over the window: ``{"worker": 0.98, ..., "others": 0.1}``."""
        wall = max(1e-6, time.monotonic() - self.started)
        split = {name: self._tree_times(name) for name in self.split}
        used = {name: self._tree(name, pid) - self.before[name] for name, pid in self.pids.items()}
        used.update(self.extra)
        if self.reaped is not None:
            used["children"] = _children_cpu() - self.reaped
        total = machine_busy_seconds() - self.machine
        cores = {name: round(seconds / wall, 3) for name, seconds in used.items()}
        cores["others"] = round(max(0.0, total - sum(used.values())) / wall, 3)
        cores["machine"] = round(total / wall, 3)
        cores["machine_softirq"] = round((machine_softirq_seconds() - self.softirq) / wall, 3)
        for name, (user, system) in split.items():
            before = self.before_split[name]
            cores[f"{name}_user"] = round((user - before[0]) / wall, 3)
            cores[f"{name}_system"] = round((system - before[1]) / wall, 3)
        for name, pid in self.pids.items():
            if name != "harness":
                cores[f"{name}_runqueue_wait"] = round(
                    (runqueue_wait(pid) - self.waited[name]) / wall, 3
                )
        return cores


def runqueue_wait(pid: int) -> float:
    """Seconds ``pid``'s main thread has spent runnable but waiting for a CPU (0 if gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- processes --------------------------------------------------------------------------------


class Processes:
    """Every process the harness starts, each in its own process group, all stopped at exit."""

    def __init__(self, workdir: Path, nice: int = 0) -> None:
        self.workdir = workdir
        self.nice = nice
        self.running: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        stdin_pipe: bool = False,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``command``; stderr (and stdout unless piped) go to ``<workdir>/<name>.log``."""
        logfile = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else logfile,
                stderr=logfile,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        finally:
            logfile.close()
        self.running.append((name, proc, stop_signal))
        if self.nice:
            set_autogroup_nice(proc.pid, self.nice)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of a process's log, for error messages."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop ``proc``'s whole process group: its stop signal, then SIGKILL."""
        stop_signal = signal.SIGTERM
        for index, (_name, running, its_signal) in enumerate(self.running):
            if running is proc:
                del self.running[index]
                stop_signal = its_signal
                break
        # Until the leader is reaped its pid, even as a zombie, names its group and cannot be
        # reused: the signals below can only reach processes this harness started.
        if proc.returncode is None:
            if not has_exited(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, stop_signal)
                wait_exit(proc, timeout)
            # Whatever is left of the group (a gunicorn worker, nginx workers) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        while self.running:
            self.stop(self.running[-1][1])


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` ended, without reaping it (see :meth:`Processes.stop`)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to end, without reaping it."""
    deadline = time.monotonic() + timeout
    while not has_exited(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give ``pid``'s scheduling group (a new session is one, with kernel autogroups) the nice
    value ``nice``: with autogroups, a process's own nice only counts inside its group."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The next line ``proc`` writes on stdout, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"{what}: no answer within {timeout:.0f} s")
    line = proc.stdout.readline().decode(errors="replace")
    if not line:
        raise BenchError(f"{what}: exited")
    return line.strip()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited(proc):
            raise BenchError(f"{what} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def http_json(
    port: int, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:``port``; the status and the decoded JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")
    finally:
        conn.close()


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any local address, IPv4 or IPv6), read from
    ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    found: set[str] = set()
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":  # 0A: LISTEN
                    found.add(fields[9])
    return found


def listens_on(pid: int, port: int) -> bool:
    """Whether ``pid`` or a process below it holds the socket listening on TCP ``port``."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for owner in descendants(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{owner}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return True
    return False


def wait_healthy(
    port: int,
    proc: subprocess.Popen[bytes],
    timeout: float,
    log_tail: Callable[[], str] = str,
    workers: int | None = None,
    path: str = "/healthz",
) -> list[int]:
    """Wait until ``GET path`` (``/healthz``; ``/readyz`` to wait for a preloaded model) on
    127.0.0.1:``port`` answers 200 and, with ``workers``, the server ``proc`` (gunicorn's
    master) has that many children; returns their pids. The answer counts only when ``proc``
    (or a child) holds the listening socket.

    Raises :class:`BenchError` with ``log_tail()`` when ``proc`` exits first or after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited(proc):
            raise BenchError("the service exited:\n" + log_tail())
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = http_json(port, "GET", path, timeout=2)
            kids = children(proc.pid)
            # Another test's or run's server may hold the port (two free_port() calls can
            # name the same port before either binds it): its answer is not ``proc``'s.
            if (
                status == 200
                and (workers is None or len(kids) == workers)
                and listens_on(proc.pid, port)
            ):
                return kids
        time.sleep(0.1)
    raise BenchError("the service did not start:\n" + log_tail())
