"""The container's health check: exit 0 when the service's ``/healthz`` answers 200.

It probes the port the server really listens on, whichever way it was given (``PORT``, a
``.env`` or TOML file, or ``python3 app.py --port 8000``): the listening TCP sockets of this
user, read from ``/proc/net/tcp`` and ``/proc/net/tcp6``, then ``PORT`` (default 5000).
Standard library only; every probe times out after 3 seconds.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import urllib.request

LISTEN = "0A"


def _address(hex_address: str) -> str:
    """``/proc/net/tcp``'s hex address (little-endian 32-bit words) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(uid: int) -> list[tuple[str, int]]:
    """``(host to connect to, port)`` of every listening TCP socket owned by ``uid``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                rows = [line.split() for line in lines.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            if len(row) < 8 or row[3] != LISTEN or row[7] != str(uid):
                continue
            hex_address, hex_port = row[1].split(":")
            host = _address(hex_address)
            if ipaddress.ip_address(host).is_unspecified:
                host = "127.0.0.1" if table.endswith("tcp") else "::1"
            found.append((host, int(hex_port, 16)))
    return found


def healthy(host: str, port: int) -> bool:
    """True when ``http://host:port/healthz`` answers 200 within 3 seconds."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{netloc}/healthz", timeout=3) as response:  # noqa: S310 - a fixed http URL
            return response.status == 200
    except (OSError, ValueError):
        return False


def main() -> int:
    """Exit status for Docker: 0 healthy, 1 unhealthy (the probed addresses on stderr)."""
    candidates = listening(os.getuid())
    candidates.append(("127.0.0.1", int(os.environ.get("PORT") or 5000)))
    for host, port in dict.fromkeys(candidates):
        if healthy(host, port):
            return 0
    print("unhealthy: no /healthz answered on", candidates, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
