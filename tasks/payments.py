"""Payments: validation, a fraud check, the charge through a gateway, then the receipt email.

Exactly one charge per payment, however often the job runs (RQ retry, rqplus crash rescue, a
requeue from the dashboard): :func:`enqueue_payment` creates an idempotency key once, stores it in
the job's own arguments, and every run charges under that key; the gateway replays the first
result instead of charging again (see :mod:`tasks.gateways`). The velocity counter and the receipt
are recorded once per key as well.

:func:`process_payment` declares its jobs' defaults with ``rqplus.task``: the durable
``payments`` queue (an enqueue refuses a Redis that could lose it) and a ``Retry`` after
``PAYMENTS_RETRY_INTERVALS`` (:func:`retry_policy`), however it is enqueued.

Jobs carry ids and amounts only, never card data or secrets: job arguments, meta and results are
shown by ``rq info`` and the dashboard. Everything else comes from the worker's environment
(:class:`Settings`).

Usage::

    from tasks.payments import enqueue_payment
    job = enqueue_payment("user_123", 49.99, notify_email="ada@example.com")

and a worker: ``rq worker -w rqplus.Worker --queue-class rqplus.Queue --with-scheduler payments``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from redis import Redis
from rq import Retry, get_current_job
from rq.job import Job
from rq.utils import as_text

from rqplus import Queue, task
from rqplus.connections import shared
from rqplus.functions import Function, Library
from rqplus.retry import stop_retries
from tasks.emails import enqueue_email, parse_address
from tasks.gateways import Charge, Gateway, IdempotencyKeyReused, PaymentDeclined
from tasks.settings import Variables, from_env, names, positive_decimal, seconds, text, whole

#: The queue payment jobs go to (a durable one: enqueue refuses a Redis that could lose them).
QUEUE = "payments"
#: ISO 4217 currencies with two minor units, the only ones accepted (amounts have at most 2 decimals).
CURRENCIES = frozenset({"AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "ILS", "INR",
                        "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR"})
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Idempotency keys: a uuid4 from enqueue_payment, a caller's own (an order id), or ``job:<id>``.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
CENT = Decimal("0.01")

#: Bookkeeping: ``PAYMENTS_PREFIX + user_id`` is a hash idempotency key -> charge (JSON).
PAYMENTS_PREFIX = "payments:user:"
#: Approvals: ``APPROVED_PREFIX + idempotency key`` exists from the fraud rules' yes until the charge
#: is booked (or ``APPROVAL_TTL`` seconds pass), so a re-run after a charge that was never booked
#: goes to the gateway (which replays) without asking rules whose window or limits changed since.
APPROVED_PREFIX = "payments:approved:"
APPROVAL_TTL = 30 * 24 * 3600
#: Receipts: a hash idempotency key -> the receipt's email job id, once enqueued.
RECEIPTS_KEY = "payments:receipts"
#: The receipt email job's id: this prefix and a digest of the payment's idempotency key (RQ job
#: ids allow only letters, digits, '_' and '-'; keys may hold '.' and ':').
RECEIPT_JOB_PREFIX = "receipt-"
#: Velocity: ``VELOCITY_PREFIX + user:currency`` is a sorted set key -> time, ``... + ":cents"`` a hash key -> cents.
VELOCITY_PREFIX = "payments:velocity:"

# Counts a payment towards its user's velocity limits, once per idempotency key, atomically (two
# concurrent payments of one user cannot both slip under the limit).
# KEYS[1] sorted set idempotency key -> time, KEYS[2] hash idempotency key -> amount in cents
# ARGV[1] idempotency key, ARGV[2] now (s), ARGV[3] window (s), ARGV[4] max count,
# ARGV[5] max total (cents), ARGV[6] this amount (cents)
# Returns "ok" (counted now, or already counted), "count" or "total" (over that limit, not counted).
_COUNT_ONCE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
for _, key in ipairs(expired) do
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ok' end
local counted = redis.call('ZRANGE', KEYS[1], 0, -1)
if #counted + 1 > tonumber(ARGV[4]) then return 'count' end
local total = tonumber(ARGV[6])
for _, key in ipairs(counted) do total = total + tonumber(redis.call('HGET', KEYS[2], key) or '0') end
if total > tonumber(ARGV[5]) then return 'total' end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 'ok'
"""
#: This module's Redis functions: Redis 7 runs them by name (`rqplus check --install --library
#: tasks.payments` loads them where the worker's user may not), so no worker needs EVAL.
FUNCTIONS = Library("tasks_payments", {"count_once": Function(_COUNT_ONCE)})


class PaymentValidationError(ValueError):
    """The payment's input is wrong (amount, currency, user id): final, never retried."""


class FraudRejected(Exception):
    """A fraud rule refused the payment before any charge was attempted. Final, never retried."""


#: Failures that re-running cannot change: the job fails at once, whatever its Retry says.
FINAL_FAILURES = (PaymentValidationError, FraudRejected, PaymentDeclined, IdempotencyKeyReused)


@dataclass(frozen=True)
class Settings:
    """Payment settings, each from an environment variable (see ``ENVIRONMENT``), else the default.

    Producers read ``max_amount`` and ``retry_intervals``; workers read the rest (and
    ``max_amount`` again: they validate too).

    Usage: ``Settings.from_env().gateway  # -> "tasks.gateways.SandboxGateway"``
    """

    gateway: str = "tasks.gateways.SandboxGateway"
    fraud_rules: tuple[str, ...] = ("tasks.payments.amount_limit", "tasks.payments.velocity_limit")
    max_amount: Decimal = Decimal("999999.99")
    fraud_max_amount: Decimal = Decimal("5000")
    velocity_max_count: int = 10
    velocity_max_total: Decimal = Decimal("10000")
    velocity_window: int = 3600
    retry_intervals: tuple[int, ...] = (10, 60, 300)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of ``ENVIRONMENT``; ``ValueError`` names the variable of a bad value.

        Usage: ``Settings.from_env({"PAYMENTS_MAX_AMOUNT": "500"}).max_amount == Decimal("500")``
        """
        return from_env(cls, ENVIRONMENT, environ)


#: Each setting: its environment variable and how its text is read.
ENVIRONMENT: Variables = {
    "gateway": ("PAYMENTS_GATEWAY", text),
    "fraud_rules": ("PAYMENTS_FRAUD_RULES", names),
    "max_amount": ("PAYMENTS_MAX_AMOUNT", positive_decimal),
    "fraud_max_amount": ("PAYMENTS_FRAUD_MAX_AMOUNT", positive_decimal),
    "velocity_max_count": ("PAYMENTS_VELOCITY_MAX_COUNT", whole(1)),
    "velocity_max_total": ("PAYMENTS_VELOCITY_MAX_TOTAL", positive_decimal),
    "velocity_window": ("PAYMENTS_VELOCITY_WINDOW", whole(1)),
    "retry_intervals": ("PAYMENTS_RETRY_INTERVALS", seconds),
}


@dataclass(frozen=True)
class Payment:
    """A validated payment: what the fraud rules and the gateway see."""

    user_id: str
    amount: Decimal  # positive, exactly 2 decimals
    currency: str
    idempotency_key: str
    notify_email: str | None = None  # where the receipt goes; None: no receipt

    @property
    def cents(self) -> int:
        return int(self.amount * 100)


def parse_amount(amount: Any, max_amount: Decimal) -> Decimal:
    """``amount`` (str, int, Decimal or float) as a Decimal with 2 decimals, or ``PaymentValidationError``.

    A float is read through its shortest repr (``49.99`` -> ``Decimal("49.99")``); one with more
    decimals (``0.1 + 0.2``) is refused: pass amounts as strings or Decimals.

    Usage: ``parse_amount(49.99, Decimal("1000")) == Decimal("49.99")``
    """
    if isinstance(amount, bool) or not isinstance(amount, (str, int, float, Decimal)):
        raise PaymentValidationError(f"amount must be a number or a numeric string, got {type(amount).__name__}")
    try:
        value = Decimal(repr(amount) if isinstance(amount, float) else str(amount).strip())
    except InvalidOperation:
        raise PaymentValidationError(f"amount {amount!r} is not a number") from None
    if not value.is_finite():
        raise PaymentValidationError(f"amount {amount!r} is not a finite number")
    if value <= 0:
        raise PaymentValidationError(f"amount {amount!r} must be positive")
    if value > max_amount:
        raise PaymentValidationError(f"amount {amount!r} is over the maximum of {max_amount} (PAYMENTS_MAX_AMOUNT)")
    if value != value.quantize(CENT):
        raise PaymentValidationError(f"amount {amount!r} has more than 2 decimals; pass it as a string or Decimal")
    return value.quantize(CENT)


def validate_payment(user_id: Any, amount: Any, currency: Any, idempotency_key: Any,
                     settings: Settings, notify_email: Any = None) -> Payment:
    """Check every input of a payment; raise ``PaymentValidationError`` saying what is wrong.

    Usage: ``validate_payment("user_123", "49.99", "usd", "order-42", Settings(), "ada@example.com")``
    """
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise PaymentValidationError(f"user id {user_id!r} must be 1-64 letters, digits, '_' or '-'")
    code = currency.upper() if isinstance(currency, str) else currency
    if code not in CURRENCIES:
        raise PaymentValidationError(f"currency {currency!r} is not accepted; expected one of "
                                     f"{', '.join(sorted(CURRENCIES))}")
    if not isinstance(idempotency_key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(idempotency_key):
        raise PaymentValidationError(f"idempotency key {idempotency_key!r} must be 1-255 letters, digits, '_.:-'")
    if notify_email is not None:
        try:
            parse_address(notify_email)
        except (TypeError, ValueError) as error:
            raise PaymentValidationError(f"notify_email: {error}") from None
    return Payment(user_id, parse_amount(amount, settings.max_amount), code, idempotency_key, notify_email)


# Fraud rules: callables (payment, settings, connection) raising FraudRejected; PAYMENTS_FRAUD_RULES names them.
FraudRule = Callable[[Payment, Settings, Redis], None]


def amount_limit(payment: Payment, settings: Settings, connection: Redis) -> None:
    """Fraud rule: refuse a single payment over ``PAYMENTS_FRAUD_MAX_AMOUNT``.

    Usage: ``amount_limit(payment, Settings(), redis)``
    """
    if payment.amount > settings.fraud_max_amount:
        raise FraudRejected(f"{payment.amount} {payment.currency} is over the single-payment limit of "
                            f"{settings.fraud_max_amount} (PAYMENTS_FRAUD_MAX_AMOUNT)")


def velocity_keys(user_id: str, currency: str) -> tuple[str, str]:
    """The velocity sorted set (key -> time) and hash (key -> cents) of one user and currency."""
    counted = f"{VELOCITY_PREFIX}{user_id}:{currency}"
    return counted, f"{counted}:cents"


def velocity_limit(payment: Payment, settings: Settings, connection: Redis) -> None:
    """Fraud rule: at most ``PAYMENTS_VELOCITY_MAX_COUNT`` payments and ``PAYMENTS_VELOCITY_MAX_TOTAL``
    per user and currency within ``PAYMENTS_VELOCITY_WINDOW`` seconds.

    Each idempotency key counts once, however often its job runs; a refused payment is not counted.

    Usage: ``velocity_limit(payment, Settings(), redis)``
    """
    keys = velocity_keys(payment.user_id, payment.currency)
    verdict = as_text(FUNCTIONS.call(connection, "count_once", keys, [
        payment.idempotency_key, time.time(), settings.velocity_window, settings.velocity_max_count,
        int(settings.velocity_max_total * 100), payment.cents]))
    if verdict == "count":
        raise FraudRejected(f"user {payment.user_id} made {settings.velocity_max_count} payments in "
                            f"{settings.velocity_window} s (PAYMENTS_VELOCITY_MAX_COUNT)")
    if verdict == "total":
        raise FraudRejected(f"user {payment.user_id} would pay over {settings.velocity_max_total} "
                            f"{payment.currency} in {settings.velocity_window} s (PAYMENTS_VELOCITY_MAX_TOTAL)")


def load_object(path: str, variable: str) -> Any:
    """The object at dotted ``path`` (``package.module.name``); ``ValueError`` naming ``variable`` if absent.

    Usage: ``load_object("tasks.gateways.SandboxGateway", "PAYMENTS_GATEWAY")``
    """
    module_name, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name == error.name or module_name.startswith(error.name + ".")):
            raise  # the module exists but one of its own imports is missing: show that
        module = None
    if module is None or not hasattr(module, name):
        raise ValueError(f"{variable}={path!r}: no such object; expected a dotted path like package.module.name")
    return getattr(module, name)


def load_gateway(connection: Redis, settings: Settings) -> Gateway:
    """The gateway class named by ``PAYMENTS_GATEWAY``, constructed with ``connection``.

    Usage: ``load_gateway(redis, Settings.from_env()).charge(...)``
    """
    gateway_class = load_object(settings.gateway, "PAYMENTS_GATEWAY")
    if not (isinstance(gateway_class, type) and issubclass(gateway_class, Gateway)):
        raise ValueError(f"PAYMENTS_GATEWAY={settings.gateway!r} is not a subclass of tasks.gateways.Gateway")
    return gateway_class(connection)


def check_fraud(payment: Payment, connection: Redis, settings: Settings) -> None:
    """Run every rule of ``PAYMENTS_FRAUD_RULES`` in order; the first refusal raises ``FraudRejected``.

    Usage: ``check_fraud(payment, redis, Settings.from_env())``
    """
    for path in settings.fraud_rules:
        rule: FraudRule = load_object(path, "PAYMENTS_FRAUD_RULES")
        rule(payment, settings, connection)


def recorded_payments(connection: Redis, user_id: str) -> dict[str, Charge]:
    """The payments booked for ``user_id``, by idempotency key.

    Usage: ``recorded_payments(redis, "user_123")``
    """
    return {as_text(key): Charge.from_json(value)
            for key, value in connection.hgetall(PAYMENTS_PREFIX + user_id).items()}


def receipt_job_id(idempotency_key: str) -> str:
    """The receipt email job's id for a payment: the same on every run of that payment.

    Usage: ``receipt_job_id("order:42")  # -> "receipt-<32 hex digits>"``
    """
    return RECEIPT_JOB_PREFIX + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def send_receipt(connection: Redis, charge: Charge, recipient: str) -> str:
    """Enqueue the receipt email of ``charge`` once; returns the email job's id (the same on every re-run).

    It goes to the ``emails`` queue at the emails' own priority (``tasks.emails``). The email job's id
    is derived from the idempotency key, so a re-run finds the job its first run enqueued while that
    job (or its result) is kept, and the record in ``RECEIPTS_KEY``, written right after, outlives
    it, so a late requeue does not send it again either. (Left open: a first run killed between the
    two, re-run only after the email's result expired, sends a second receipt.)

    Usage: ``send_receipt(redis, charge, "ada@example.com")  # -> receipt_job_id(charge.idempotency_key)``
    """
    key = charge.idempotency_key
    sent = connection.hget(RECEIPTS_KEY, key)
    if sent:
        return as_text(sent)
    email = enqueue_email(recipient, f"Payment of {charge.amount} {charge.currency} received",
                          f"We received your payment of {charge.amount} {charge.currency}.\n"
                          f"Reference: {charge.charge_id}", connection=connection,
                          job_id=receipt_job_id(key))
    connection.hset(RECEIPTS_KEY, key, email.id)
    return email.id


def retry_policy() -> Retry | None:
    """The ``Retry`` of one payment job: one retry after each of ``PAYMENTS_RETRY_INTERVALS``
    (default 10, 60, 300 s); None when that is empty. Read at enqueue time.

    Usage: ``retry_policy()  # -> Retry(max=3, interval=[10, 60, 300])``
    """
    intervals = Settings.from_env().retry_intervals
    return Retry(max=len(intervals), interval=list(intervals)) if intervals else None


@task(queue=QUEUE, durable=True, retry=retry_policy)
def process_payment(user_id: str, amount: str | Decimal | float, currency: str = "USD", *,
                    idempotency_key: str | None = None, notify_email: str | None = None) -> dict[str, str | None]:
    """The payment job: validate, check fraud, charge once per idempotency key, book it, send the receipt.

    Its jobs go to a durable Redis only, with a :func:`retry_policy` retry, however they are
    enqueued. Enqueue it with :func:`enqueue_payment`. Enqueued directly (the seed's
    ``queue.enqueue(process_payment, 'user_123', 49.99)``), the job id is the idempotency key.
    Bad input, a fraud refusal and a declined charge fail the job without a retry.

    Returns the charge (ids, amount, status) and the receipt's email job id.

    Usage: ``Queue("payments", connection=redis).enqueue(process_payment, "user_123", "49.99")``
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("process_payment runs in a worker: enqueue it with tasks.payments.enqueue_payment")
    connection, settings = job.connection, Settings.from_env()
    try:
        payment = validate_payment(user_id, amount, currency, idempotency_key or f"job:{job.id}", settings,
                                   notify_email)
        with connection.pipeline(transaction=False) as pipe:
            pipe.hget(PAYMENTS_PREFIX + payment.user_id, payment.idempotency_key)
            pipe.exists(APPROVED_PREFIX + payment.idempotency_key)
            booked, approved = pipe.execute()
        if booked:
            # a re-run of a payment already charged and booked: neither today's fraud limits nor the
            # gateway's replay window (often a day) may decide it again
            charge = Charge.from_json(booked).require_same_request(payment.user_id, payment.amount, payment.currency)
        else:
            if not approved:  # approved before: the gateway may have charged already; it decides
                check_fraud(payment, connection, settings)
                connection.set(APPROVED_PREFIX + payment.idempotency_key, 1, ex=APPROVAL_TTL)
            charge = load_gateway(connection, settings).charge(payment.idempotency_key, payment.user_id,
                                                               payment.amount, payment.currency)
    except FINAL_FAILURES:
        stop_retries(job)  # the same input would fail the same way
        raise
    with connection.pipeline() as pipe:  # booked and no longer pending approval, at once
        pipe.hset(PAYMENTS_PREFIX + payment.user_id, payment.idempotency_key, charge.to_json())
        pipe.delete(APPROVED_PREFIX + payment.idempotency_key)
        pipe.execute()
    job.meta["charge_id"] = charge.charge_id
    job.save_meta()
    email_job_id = send_receipt(connection, charge, payment.notify_email) if payment.notify_email else None
    return {"charge_id": charge.charge_id, "status": charge.status, "user_id": charge.user_id,
            "amount": str(charge.amount), "currency": charge.currency,
            "idempotency_key": charge.idempotency_key, "email_job_id": email_job_id}


def enqueue_payment(user_id: str, amount: str | Decimal | float, currency: str = "USD", *,
                    notify_email: str | None = None, priority: int | None = None,
                    idempotency_key: str | None = None, connection: Redis | None = None) -> Job:
    """Validate a payment and enqueue it on the durable ``payments`` queue, with its idempotency key.

    Bad input raises ``PaymentValidationError`` before anything is written; a Redis that is not
    durable raises ``rqplus.DurabilityError``. ``idempotency_key`` defaults to a new uuid4; pass
    your own (say, the order id) to make a double submission charge once too. ``notify_email``
    gets a receipt after the charge. Transient gateway errors are retried after
    ``PAYMENTS_RETRY_INTERVALS`` (workers need ``--with-scheduler`` for non-zero intervals).
    ``connection`` defaults to ``rqplus.connections.shared()`` (``REDIS_URL``).

    Usage: ``enqueue_payment("user_123", 49.99, notify_email="ada@example.com")``
    """
    settings = Settings.from_env()
    payment = validate_payment(user_id, amount, currency, idempotency_key or str(uuid.uuid4()), settings,
                               notify_email)
    receipt = {"notify_email": payment.notify_email} if payment.notify_email else {}
    return Queue(QUEUE, connection=connection or shared()).enqueue_call(
        process_payment,
        args=(payment.user_id, str(payment.amount), payment.currency),
        kwargs={"idempotency_key": payment.idempotency_key, **receipt},
        priority=priority,
    )
