"""A circuit breaker per upstream, its state in the shared state so every worker and every
instance on the same Redis sees the same one.

- **closed**: calls go through; each failure adds one to a count of consecutive failures,
  any success clears it.
- **open**: after UPSTREAM_BREAKER_FAILURES consecutive failures the upstream is skipped for
  a cooldown (UPSTREAM_BREAKER_COOLDOWN seconds, doubled each time it opens again without a
  success in between, at most :data:`MAX_COOLDOWN`).
- **half open**: once the cooldown is over, one call (the *probe*: whoever wins an atomic
  ``add`` across workers) goes through; its success closes the breaker, its failure opens it
  again for a longer cooldown. Other calls keep skipping it while the probe runs.

State keys (under ``breaker:<name>:``): ``failures`` (consecutive count), ``open``
(``"<until> <times opened>"``, epoch seconds), ``probe`` (the probe's lock, with a TTL so a
probe that never reports back does not block the upstream forever). With the storage down,
every breaker reads as closed: losing the breakers beats refusing every call.

Each worker keeps what it read for :data:`READ_CACHE` seconds (what it wrote, at once): the
state is read at most once a second per upstream instead of on every call, so another
worker's or instance's change is seen within that second.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from chatservice.errors import ServiceError
from chatservice.state import KeyValueStore

log = logging.getLogger(__name__)

#: Longest cooldown, in seconds, however long failures continue.
MAX_COOLDOWN = 600.0
#: Seconds a worker trusts what it last read of a breaker.
READ_CACHE = 1.0

BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    """The breaker of upstream ``name``.

    :param failures: consecutive failures that open it (UPSTREAM_BREAKER_FAILURES).
    :param cooldown: the first cooldown, seconds (UPSTREAM_BREAKER_COOLDOWN).
    :param probe_ttl: seconds a probe holds its lock at most (the upstream's time limits).
    """

    def __init__(
        self, name: str, state: KeyValueStore, failures: int, cooldown: float, probe_ttl: float
    ) -> None:
        self.name = name
        self._state = state
        self._threshold = failures
        self._cooldown = cooldown
        self._probe_ttl = probe_ttl
        self._key = f"breaker:{name}:"
        self._seen: dict[str, tuple[float, str | None]] = {}

    def status(self) -> tuple[BreakerState, float | None]:
        """The state and, when open, the epoch second its cooldown ends."""
        opened = self._cached("open")
        if opened is None:
            return "closed", None
        until = float(opened.split()[0])
        if until > self._state.clock():
            return "open", until
        return "half_open", None

    def available(self) -> bool:
        """Whether a call may be tried now, without taking the probe (for ordering)."""
        return self.status()[0] != "open"

    def admit(self) -> bool:
        """Whether this call may go: always when closed, never when open, and when half
        open only for the one caller that takes the probe.
        """
        state, _ = self.status()
        if state == "closed":
            return True
        if state == "open":
            return False
        try:
            return self._state.add(self._key + "probe", "1", ttl=self._probe_ttl)
        except ServiceError:
            return True

    def succeeded(self) -> None:
        """A call went through: the breaker closes (and its counts start over)."""
        try:
            if self._cached("failures") is None:
                return  # the common case: no write, at most one read a second
            for name in ("failures", "open", "probe"):
                self._state.delete(self._key + name)
                self._seen[name] = (time.monotonic(), None)
        except ServiceError:
            log.warning("breaker state unreachable; %s not reset", self.name)
            return
        log.info("upstream %s answers again: breaker closed", self.name)

    def failed(self) -> None:
        """A call failed because of the upstream: count it; open the breaker at the
        threshold, or again when it was open or half open (a failed probe).
        """
        try:
            count = self._state.incr(self._key + "failures")
            self._seen["failures"] = (time.monotonic(), str(count))
            opened = self._state.get(self._key + "open")
            self._seen["open"] = (time.monotonic(), opened)
            if opened is None and count < self._threshold:
                return
            if opened is not None and float(opened.split()[0]) > self._state.clock():
                return  # a call that started before it opened: the cooldown stands
            times = int(opened.split()[1]) + 1 if opened else 1
            seconds = min(MAX_COOLDOWN, self._cooldown * 2 ** (times - 1))
            until = self._state.clock() + seconds
            self._state.set(self._key + "open", f"{until} {times}")
            self._seen["open"] = (time.monotonic(), f"{until} {times}")
            self._state.delete(self._key + "probe")
        except ServiceError:
            log.warning("breaker state unreachable; %s failure not counted", self.name)
            return
        log.warning("upstream %s failing: breaker open for %.0f s", self.name, seconds)

    def fresh(self) -> Breaker:
        """Forget what this worker read: the next look reads the shared state."""
        self._seen.clear()
        return self

    def _cached(self, name: str) -> str | None:
        now = time.monotonic()
        seen = self._seen.get(name)
        if seen is not None and now - seen[0] < READ_CACHE:
            return seen[1]
        try:
            value = self._state.get(self._key + name)
        except ServiceError:
            return None
        self._seen[name] = (now, value)
        return value
