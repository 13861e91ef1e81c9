"""Client keys at work (AUTH_MODE=keys): who is calling, may they, and what did they use.

:class:`ClientKeys` manages the keys of one store (create, find, update, delete, list, and
turn a key a client sent into its :class:`~chatservice.clientkeys.KeyRecord`); the admin API,
the ``python3 app.py keys`` command and :mod:`chatservice.auth` go through it.

:class:`KeyBudgets` is the answer pipeline's observer (:mod:`chatservice.pipeline`) for keyed
calls. Before the backend is called it refuses a model the key may not use (403
``model_not_allowed_for_key``) and reserves, in one atomic step of the store, one request of
the key's RPM window and the call's worst case in tokens (prompt tokens as
:func:`chatservice.tokens.count_prompt_tokens` counts them, plus ``max_tokens``, or
CLIENT_KEY_RESERVE_TOKENS when the request sets none) in its TPM window and its budgets; a
counter that would pass its limit refuses the call with 429 (``key_rate_limited``,
``key_tokens_limited`` with Retry-After; ``budget_exhausted``, with Retry-After for a daily
or monthly budget). When the call ends, however it ends (a client that went away too), the
reservation is settled with the real usage (the backend's ``usage``, else the service's own
count of the prompt and of the text that went by; nothing for a call that failed before any
output), and the key's usage row of the day and model grows (with the cost under
``[prices]``), and the ``chatservice_client_key_*`` metrics with the key's name.
"""

from __future__ import annotations

import calendar
import datetime as dt
import fnmatch
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import g, has_request_context

from chatservice import clientkeys
from chatservice.clientkeys import KeyRecord
from chatservice.errors import NotFound, ServiceError
from chatservice.keystore import Counter, KeyStore, UsageRow
from chatservice.models import ChatChunk, ChatResult
from chatservice.pipeline import Call, Watch
from chatservice.tokens import TokenCounter, count_prompt_tokens, count_text_tokens, current_counter

if TYPE_CHECKING:
    from chatservice.metrics import Metrics
    from chatservice.settings import Settings

log = logging.getLogger(__name__)

#: Where the authenticated client's key record waits for the pipeline (``flask.g``).
G_ATTRIBUTE = "client_key"
MINUTE = 60
DAY = 86400


class ClientKeys:
    """The client keys in ``store``; ``settings`` gives CLIENT_KEY_RESERVE_TOKENS and PRICES."""

    def __init__(self, store: KeyStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # --- management -----------------------------------------------------------------------

    def create(self, fields: Mapping[str, Any]) -> tuple[str, KeyRecord]:
        """A new key with ``fields`` (as :func:`clientkeys.parse_settings` returns them):
        the key itself, shown once, and its record. Raises 409 ``client_key_name_taken``.
        """
        key = clientkeys.new_key()
        record = KeyRecord(
            id=clientkeys.new_id(),
            masked=clientkeys.mask(key),
            created_at=round(time.time(), 3),
            **fields,
        )
        self.store.create(record, clientkeys.hash_key(key))
        log.info("client key created: id=%s name=%s", record.id, record.name)
        return key, record

    def find(self, ref: str) -> KeyRecord:
        """The key whose id or name is ``ref``; raises 404 ``client_key_not_found``."""
        record = self.store.get(ref) or self.store.by_name(ref)
        if record is None:
            raise NotFound("client_key_not_found")
        return record

    def update(self, ref: str, fields: Mapping[str, Any]) -> KeyRecord:
        """The key ``ref`` with ``fields`` changed (404 as :meth:`find`; 409 for a taken name)."""
        record = self.find(ref)
        changed = KeyRecord(
            **{**record.to_json(), **fields, "models": fields.get("models", record.models)}
        )
        self.store.replace(changed)
        log.info("client key updated: id=%s fields=%s", record.id, ",".join(sorted(fields)))
        return changed

    def delete(self, ref: str) -> KeyRecord:
        """Delete the key ``ref`` (404 as :meth:`find`); its usage rows stay."""
        record = self.find(ref)
        self.store.delete(record.id)
        log.info("client key deleted: id=%s name=%s", record.id, record.name)
        return record

    def all(self) -> list[KeyRecord]:
        """Every key, oldest first."""
        return self.store.all()

    def spent(self, record: KeyRecord, now: float | None = None) -> dict[str, int]:
        """Tokens counted against the key's budgets (settled plus reserved): ``total``,
        ``today`` and ``this_month`` (UTC).
        """
        now = time.time() if now is None else now
        names = [_total(record), _day(record, now), _month(record, now)]
        total, today, month = self.store.read(names)
        return {"total": total, "today": today, "this_month": month}

    # --- authentication -------------------------------------------------------------------

    def authenticate(self, key: str, now: float | None = None) -> KeyRecord:
        """The record of the key a client sent; 401 ``auth_failed`` (unknown),
        ``client_key_disabled`` or ``client_key_expired``; 503 when the store fails.
        """
        now = time.time() if now is None else now
        record = self.store.by_hash(clientkeys.hash_key(key))
        if record is None:
            raise ServiceError("auth_failed")
        if not record.enabled:
            raise ServiceError("client_key_disabled")
        if record.expired(now):
            raise ServiceError("client_key_expired")
        return record

    # --- admission and settlement ---------------------------------------------------------

    def worst_case(self, call: Call) -> tuple[int, int]:
        """``(prompt tokens, worst-case total)`` of ``call``."""
        req = call.request
        prompt = count_prompt_tokens(req)
        limit = req.max_tokens or req.params.get("max_completion_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            limit = self.settings.client_key_reserve_tokens
        return prompt, prompt + limit

    def admit(self, record: KeyRecord, worst: int, now: float | None = None) -> list[str]:
        """Reserve one request and ``worst`` tokens for ``record``: the names of the token
        counters to settle later. Raises 429 as the module docstring says.
        """
        now = time.time() if now is None else now
        plan: list[tuple[Counter, str, float | None]] = []
        window = int(now // MINUTE)
        to_next_minute = (window + 1) * MINUTE - now
        if record.rpm:
            counter = Counter(f"{record.id}:rpm:{window}", record.rpm, 1, 2 * MINUTE)
            plan.append((counter, "key_rate_limited", to_next_minute))
        if record.tpm:
            counter = Counter(f"{record.id}:tpm:{window}", record.tpm, worst, 2 * MINUTE)
            plan.append((counter, "key_tokens_limited", to_next_minute))
        if record.budget_tokens is not None:
            plan.append(
                (Counter(_total(record), record.budget_tokens, worst), "budget_exhausted", None)
            )
        if record.daily_budget_tokens is not None:
            counter = Counter(_day(record, now), record.daily_budget_tokens, worst, 2 * DAY)
            plan.append((counter, "budget_exhausted", _next_day(now) - now))
        if record.monthly_budget_tokens is not None:
            counter = Counter(_month(record, now), record.monthly_budget_tokens, worst, 32 * DAY)
            plan.append((counter, "budget_exhausted", _next_month(now) - now))
        if not plan:
            return []
        refused = self.store.reserve([counter for counter, _, _ in plan])
        if refused is not None:
            _, key, wait = plan[refused]
            raise _refusal(key, wait)
        # Every counter but the request count holds tokens, which settling corrects.
        return [counter.name for counter, key, _ in plan if key != "key_rate_limited"]

    def settle(self, names: list[str], worst: int, used: int) -> None:
        """Replace a reservation of ``worst`` tokens by the ``used`` ones."""
        if names and used != worst:
            self.store.adjust(names, used - worst)

    def cost_nanos(self, model: str, prompt: int, completion: int) -> int:
        """The cost of the tokens under PRICES, in billionths of its currency (0 unpriced)."""
        price = price_of(self.settings.prices, model)
        if price is None:
            return 0
        # tokens x price per million = millionths of the currency; x 1000: billionths.
        return round((prompt * price[0] + completion * price[1]) * 1000)


def price_of(prices: Mapping[str, tuple[float, float]], model: str) -> tuple[float, float] | None:
    """``(input, output)`` per million tokens of ``model``: its own entry, else the first
    pattern (``*`` wildcards) that matches it, else ``None``.
    """
    if model in prices:
        return prices[model]
    for pattern, price in prices.items():
        if fnmatch.fnmatchcase(model, pattern):
            return price
    return None


def current_key() -> KeyRecord | None:
    """The key the current request authenticated with (AUTH_MODE=keys), else ``None``."""
    return g.get(G_ATTRIBUTE) if has_request_context() else None


class KeyBudgets:
    """The pipeline observer of keyed calls (see the module docstring)."""

    def __init__(self, keys: ClientKeys, metrics: Metrics | None = None) -> None:
        self._keys = keys
        self._metrics = metrics

    def begin(self, call: Call) -> Watch | None:
        """Admit ``call`` (raises 403/429) and watch it; ``None`` for an unkeyed call."""
        record = current_key()
        if record is None:
            return None
        model = call.request.model
        if not record.allows(model):
            raise ServiceError("model_not_allowed_for_key", model=model)
        prompt, worst = self._keys.worst_case(call)
        names = self._keys.admit(record, worst)
        watch = _KeyWatch(self._keys, self._metrics, record, model, names, prompt, worst)
        # A stream is settled after its response ended, outside the app context.
        watch.counter = current_counter()
        return watch


class _KeyWatch(Watch):
    def __init__(
        self,
        keys: ClientKeys,
        metrics: Metrics | None,
        record: KeyRecord,
        model: str,
        names: list[str],
        prompt: int,
        worst: int,
    ) -> None:
        self._keys = keys
        self._metrics = metrics
        self._record = record
        self._model = model
        self._names = names
        self._prompt = prompt
        self._worst = worst
        self._usage: dict[str, Any] | None = None
        self._parts: list[str] = []
        self._output = False
        self.counter: TokenCounter | None = None

    def result(self, result: ChatResult) -> None:
        self._usage = result.usage
        self._parts.append(result.text)
        self._output = True

    def chunk(self, chunk: ChatChunk) -> None:
        self._output = True
        if chunk.usage:
            self._usage = chunk.usage
        if chunk.text:
            self._parts.append(chunk.text)

    def end(self, outcome: str) -> None:
        prompt, completion = self._tokens(outcome)
        try:
            self._keys.settle(self._names, self._worst, prompt + completion)
        finally:
            self._record_usage(outcome, prompt, completion)

    def _tokens(self, outcome: str) -> tuple[int, int]:
        usage = self._usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if _count(prompt) and _count(completion):
            return prompt, completion  # type: ignore[return-value]
        if outcome == "failed" and not self._output:
            return 0, 0  # refused or unreachable: nothing was generated
        answer = "".join(self._parts)
        return self._prompt, count_text_tokens(answer, self._model, counter=self.counter)

    def _record_usage(self, outcome: str, prompt: int, completion: int) -> None:
        now = time.time()
        name = self._record.name
        self._keys.store.add_usage(
            UsageRow(
                day=_date(now),
                key_id=self._record.id,
                key_name=name,
                model=self._model,
                requests=1,
                prompt_tokens=prompt,
                completion_tokens=completion,
                errors=int(outcome == "failed"),
                cost_nanos=self._keys.cost_nanos(self._model, prompt, completion),
            )
        )
        if self._metrics is not None:
            self._metrics.client_requests.labels(name, outcome).inc()
            for direction, amount in (("in", prompt), ("out", completion)):
                if amount:
                    self._metrics.client_tokens.labels(name, direction).inc(amount)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refusal(key: str, wait: float | None) -> ServiceError:
    if wait is None:
        return ServiceError(key)
    seconds = max(1, math.ceil(wait))
    return ServiceError(key, headers={"Retry-After": str(seconds)}, seconds=seconds)


def _date(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")


def _total(record: KeyRecord) -> str:
    return f"{record.id}:total"


def _day(record: KeyRecord, now: float) -> str:
    return f"{record.id}:day:{_date(now)}"


def _month(record: KeyRecord, now: float) -> str:
    return f"{record.id}:month:{_date(now)[:7]}"


def _next_day(now: float) -> float:
    return (math.floor(now / DAY) + 1) * DAY


def _next_month(now: float) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))
