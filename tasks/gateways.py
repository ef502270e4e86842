"""Payment gateways: the interface :mod:`tasks.payments` charges through, and a sandbox to test with.

A gateway must be idempotent by key: the first ``charge`` under an idempotency key decides the
outcome, and every later call with that key returns (replays) the same result without charging
again, as Stripe, Adyen and Braintree do with their idempotency-key headers. That is what makes a
payment job safe to re-run after a crash, a retry or a requeue.

:class:`SandboxGateway` keeps its ledger in Redis (``sandbox:ledger``, one entry per idempotency
key, in charge order) so tests and people can look at what was really charged.

Usage::

    gateway = SandboxGateway(redis)
    charge = gateway.charge("3f6c...", "user_123", Decimal("49.99"), "USD")
    gateway.charge("3f6c...", "user_123", Decimal("49.99"), "USD") == charge   # replayed, not charged again
    gateway.ledger()                                                          # [charge]
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from decimal import Decimal

from redis import Redis

from rqplus.functions import Function, Library

#: Status of a charge that took the money.
SUCCEEDED = "succeeded"
#: Status of a charge the gateway refused (for good: retrying cannot change it).
DECLINED = "declined"

#: Sandbox: the first result recorded for an idempotency key (``SANDBOX_CHARGE_PREFIX + key``).
SANDBOX_CHARGE_PREFIX = "sandbox:charge:"
#: Sandbox: every recorded result, in order, once per idempotency key (a Redis list of JSON).
SANDBOX_LEDGER_KEY = "sandbox:ledger"
#: Sandbox: amounts with these cents are declined, like Stripe's test card 4000 0000 0000 0002.
SANDBOX_DECLINED_CENTS = 13

# First write wins, in one atomic step: the result kept under the key and its ledger entry are
# written together, so a crash never leaves a charge without its entry, or the other way round.
# KEYS[1] the key's record (SANDBOX_CHARGE_PREFIX .. key), KEYS[2] the ledger (SANDBOX_LEDGER_KEY)
# ARGV[1] this attempt's result (JSON), kept only if the key has none yet
# Returns the result kept for the key: ARGV[1] if it was new, else the first one.
_RECORD_ONCE = """
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
return ARGV[1]
"""
#: This module's Redis functions (see tasks.payments.FUNCTIONS).
FUNCTIONS = Library("tasks_gateways", {"record_once": Function(_RECORD_ONCE)})


class GatewayError(Exception):
    """The gateway could not be reached or did not answer: transient, the payment job is retried."""


class PaymentDeclined(Exception):
    """The gateway refused the charge (``charge.status == "declined"``): final, never retried."""

    def __init__(self, charge: Charge):
        self.charge = charge
        super().__init__(f"charge {charge.charge_id} of {charge.amount} {charge.currency} was declined")


class IdempotencyKeyReused(ValueError):
    """An idempotency key came back with another user, amount or currency: final, never retried."""


@dataclass(frozen=True)
class Charge:
    """The outcome of a charge, as the gateway recorded it (no card data: ids and amounts only)."""

    charge_id: str
    status: str  # SUCCEEDED or DECLINED
    user_id: str
    amount: Decimal
    currency: str
    idempotency_key: str
    created_at: float  # Unix time

    def to_json(self) -> str:
        """The charge as JSON, the amount as an exact string (``"49.99"``).

        Usage: ``Charge.from_json(charge.to_json()) == charge``
        """
        return json.dumps({**asdict(self), "amount": str(self.amount)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Charge:
        """Read back what :meth:`to_json` wrote.

        Usage: ``Charge.from_json(redis.get(key))``
        """
        fields = json.loads(text)
        return cls(**{**fields, "amount": Decimal(fields["amount"])})

    def require_same_request(self, user_id: str, amount: Decimal, currency: str) -> Charge:
        """This charge, if it was made for exactly this user, amount and currency; else ``IdempotencyKeyReused``.

        Usage: ``kept = Charge.from_json(recorded).require_same_request("user_123", Decimal("49.99"), "USD")``
        """
        if (self.user_id, self.amount, self.currency) != (user_id, amount, currency):
            raise IdempotencyKeyReused(
                f"idempotency key {self.idempotency_key!r} was first used for {self.amount} {self.currency} "
                f"by {self.user_id}, not {amount} {currency} by {user_id}")
        return self


class Gateway(ABC):
    """What :mod:`tasks.payments` needs from a payment provider; subclass it to plug in a real one.

    The constructor gets the worker's Redis connection (a gateway may ignore it). Credentials come
    from the worker's environment, never from the job: job arguments are shown in the dashboard.
    """

    def __init__(self, connection: Redis):
        self.connection = connection

    @abstractmethod
    def charge(self, idempotency_key: str, user_id: str, amount: Decimal, currency: str) -> Charge:
        """Charge ``amount`` once per ``idempotency_key``; a repeated key returns the first result.

        Raises :class:`PaymentDeclined` for a refusal (final), :class:`IdempotencyKeyReused` for a
        key seen with other details (final), :class:`GatewayError` when the outcome is unknown
        (the job is retried with the same key).

        Usage: ``gateway.charge(key, "user_123", Decimal("49.99"), "USD")``
        """


class SandboxGateway(Gateway):
    """A gateway that moves no money: it records each charge in Redis, once per idempotency key.

    Amounts ending in ``.13`` are declined (recorded as declined, and replayed as such).

    Usage: ``SandboxGateway(redis).ledger()``
    """

    def charge(self, idempotency_key: str, user_id: str, amount: Decimal, currency: str) -> Charge:
        cents = int(amount * 100) % 100
        attempt = Charge(
            charge_id=f"ch_sandbox_{uuid.uuid4().hex[:24]}",
            status=DECLINED if cents == SANDBOX_DECLINED_CENTS else SUCCEEDED,
            user_id=user_id,
            amount=amount,
            currency=currency,
            idempotency_key=idempotency_key,
            created_at=time.time(),
        )
        keys = (SANDBOX_CHARGE_PREFIX + idempotency_key, SANDBOX_LEDGER_KEY)
        recorded = FUNCTIONS.call(self.connection, "record_once", keys, [attempt.to_json()])
        kept = Charge.from_json(recorded).require_same_request(user_id, amount, currency)
        if kept.status == DECLINED:
            raise PaymentDeclined(kept)
        return kept

    def ledger(self) -> list[Charge]:
        """Every recorded charge (declined ones too), oldest first, one per idempotency key.

        Usage: ``[c for c in SandboxGateway(redis).ledger() if c.status == "succeeded"]``
        """
        return [Charge.from_json(entry) for entry in self.connection.lrange(SANDBOX_LEDGER_KEY, 0, -1)]
