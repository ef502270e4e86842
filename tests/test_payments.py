"""tasks/payments.py and tasks/gateways.py: exactly one charge per payment under crashes, retries
and requeues, with real worker processes SIGKILLed between the charge and the bookkeeping.

The gateways below are test doubles loaded by worker subprocesses through ``PAYMENTS_GATEWAY``
(``tests.test_payments.CrashingGateway``): each charges through the sandbox ledger, then misbehaves.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
import uuid
from decimal import Decimal

import pytest
from rq import Retry
from rq.job import Job
from rq.registry import FailedJobRegistry

from rqplus import Queue
from rqplus.embedded import DURABLE_CONFIG
from rqplus.exceptions import DurabilityError
from tasks.gateways import (DECLINED, SUCCEEDED, Charge, GatewayError, IdempotencyKeyReused, PaymentDeclined,
                            SandboxGateway)
from tasks.payments import (APPROVED_PREFIX, QUEUE, FraudRejected, Payment, PaymentValidationError, Settings,
                            amount_limit, enqueue_payment, load_gateway, parse_amount, receipt_job_id,
                            recorded_payments, velocity_keys, velocity_limit)
from tests.conftest import wait_for

#: Test gateways count each charge call here (a hash idempotency key -> calls).
ATTEMPTS_KEY = "test:gateway:attempts"
#: Test gateways misbehave once per idempotency key: the first call claims ``FIRST_CALL_PREFIX + key``.
FIRST_CALL_PREFIX = "test:gateway:first:"
#: Worker options of the crash tests: dead workers' jobs are rescued within about 7 s (and random kills
#: that hit one job 4 times must not fail it by the rescue cap, tested in tests/test_recovery.py).
FAST_RESCUE = {"RQPLUS_RESCUE_INTERVAL": "1", "RQPLUS_MAX_RESCUES": "100"}
MONITORING = ("--job-monitoring-interval", "1")


class CountingGateway(SandboxGateway):
    """The sandbox, counting calls per key and running ``after_first_charge`` once per key."""

    def charge(self, idempotency_key: str, user_id: str, amount: Decimal, currency: str) -> Charge:
        self.connection.hincrby(ATTEMPTS_KEY, idempotency_key, 1)
        charge = super().charge(idempotency_key, user_id, amount, currency)
        if self.connection.set(FIRST_CALL_PREFIX + idempotency_key, 1, nx=True):
            self.after_first_charge()
        return charge

    def after_first_charge(self) -> None:
        """What happens after the first charge of a key, before the job books it."""


class CrashingGateway(CountingGateway):
    """SIGKILLs its worker and work-horse right after the first charge of each key, as a crash would."""

    def after_first_charge(self) -> None:
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


class FlakyGateway(CountingGateway):
    """Charges, then loses the answer the first time: the job sees a transient error."""

    def after_first_charge(self) -> None:
        raise GatewayError("connection reset while reading the gateway's answer")


class SlowGateway(CountingGateway):
    """Every answer takes 0.3 s after the charge: the window in which random kills land."""

    def charge(self, idempotency_key: str, user_id: str, amount: Decimal, currency: str) -> Charge:
        charge = super().charge(idempotency_key, user_id, amount, currency)
        time.sleep(0.3)
        return charge


def attempts(redis) -> dict[str, int]:
    return {key.decode(): int(count) for key, count in redis.hgetall(ATTEMPTS_KEY).items()}


def succeeded(redis) -> list[Charge]:
    return [charge for charge in SandboxGateway(redis).ledger() if charge.status == SUCCEEDED]


def email_jobs(redis) -> list[Job]:
    """Every receipt email enqueued (queued or done)."""
    emails = Queue("emails", connection=redis)
    ids = emails.get_job_ids() + emails.finished_job_registry.get_job_ids() + emails.failed_job_registry.get_job_ids()
    return [Job.fetch(job_id, connection=redis) for job_id in ids]


def describe(redis, job: Job) -> str:
    """Status, rescues and last error of ``job``: what a failing crash test needs to say."""
    result = job.latest_result()
    error = result.exc_string.strip().splitlines()[-1] if result and result.exc_string else None
    return f"{job.id} {job.get_status()}, rescues {redis.hget(job.key, 'rescues')}: {error}"


@pytest.fixture
def durable(redis_factory):
    """A client of a fresh AOF, noeviction redis-server (payments refuse anything less) and its URL."""
    server = redis_factory(**DURABLE_CONFIG)
    client = server.client()
    yield client, server.url
    client.close()


# --- producer: validation before anything is written ---------------------------------------------------------


def test_enqueue_payment_carries_an_idempotency_key_and_the_exact_amount(durable):
    redis, _ = durable
    job = enqueue_payment("user_123", 49.99, notify_email="ada@example.com", priority=1, connection=redis)
    job = Job.fetch(job.id, connection=redis)
    assert job.origin == QUEUE
    assert job.args == ("user_123", "49.99", "USD")
    assert uuid.UUID(job.kwargs["idempotency_key"]).version == 4
    assert job.kwargs["notify_email"] == "ada@example.com"
    assert (job.retries_left, job.retry_intervals) == (3, [10, 60, 300])
    assert job.meta["priority"] == 1
    other = enqueue_payment("user_123", "49.99", connection=redis)
    assert other.kwargs["idempotency_key"] != job.kwargs["idempotency_key"]
    assert "notify_email" not in other.kwargs


@pytest.mark.parametrize("user_id, amount, currency, error", [
    ("user_123", -5, "USD", "must be positive"),
    ("user_123", 0, "USD", "must be positive"),
    ("user_123", math.nan, "USD", "not a finite number"),
    ("user_123", "NaN", "USD", "not a finite number"),
    ("user_123", math.inf, "USD", "not a finite number"),
    ("user_123", "1.001", "USD", "more than 2 decimals"),
    ("user_123", 0.1 + 0.2, "USD", "more than 2 decimals"),
    ("user_123", 10**12, "USD", "over the maximum of 999999.99"),
    ("user_123", "12,50", "USD", "is not a number"),
    ("user_123", True, "USD", "must be a number"),
    ("user_123", 49.99, "XYZ", "currency 'XYZ' is not accepted"),
    ("user 123", 49.99, "USD", "user id 'user 123'"),
    ("", 49.99, "USD", "user id ''"),
    (123, 49.99, "USD", "user id 123"),
])
def test_bad_input_fails_at_the_call_and_writes_nothing(redis, user_id, amount, currency, error):
    with pytest.raises(PaymentValidationError, match=error):
        enqueue_payment(user_id, amount, currency, connection=redis)
    assert redis.keys("*") == []


def test_a_bad_priority_key_or_receipt_address_writes_nothing(redis):
    with pytest.raises(ValueError, match="priority"):
        enqueue_payment("user_123", "1.00", priority=10, connection=redis)
    with pytest.raises(PaymentValidationError, match="idempotency key"):
        enqueue_payment("user_123", "1.00", idempotency_key="not a key", connection=redis)
    with pytest.raises(PaymentValidationError, match="notify_email: 'ada@' is not a valid email address"):
        enqueue_payment("user_123", "1.00", notify_email="ada@", connection=redis)
    assert redis.keys("*") == []


def test_a_non_durable_redis_is_refused(redis):
    """The session's server runs without AOF: a payment could be lost, so none is accepted."""
    with pytest.raises(DurabilityError, match="appendonly yes"):
        enqueue_payment("user_123", "49.99", connection=redis)
    assert redis.keys("*") == []


@pytest.mark.parametrize("amount, expected", [
    (49.99, "49.99"), ("49.99", "49.99"), (Decimal("49.99"), "49.99"), (10, "10.00"), ("1.000", "1.00"),
    (" 7.5 ", "7.50"), (999999.99, "999999.99"),
])
def test_amounts_are_read_exactly(amount, expected):
    assert str(parse_amount(amount, Settings().max_amount)) == expected


def test_settings_come_from_the_environment_and_name_a_bad_variable(monkeypatch, durable):
    redis, _ = durable
    settings = Settings.from_env({"PAYMENTS_MAX_AMOUNT": "500", "PAYMENTS_FRAUD_RULES": "a.b, c.d",
                                  "PAYMENTS_RETRY_INTERVALS": "0, 5"})
    assert (settings.max_amount, settings.fraud_rules, settings.retry_intervals) == (500, ("a.b", "c.d"), (0, 5))
    for variable, value in [("PAYMENTS_MAX_AMOUNT", "lots"), ("PAYMENTS_VELOCITY_WINDOW", "0"),
                            ("PAYMENTS_RETRY_INTERVALS", "10,-1")]:
        with pytest.raises(ValueError, match=f"{variable}={value!r}"):
            Settings.from_env({variable: value})
    monkeypatch.setenv("PAYMENTS_RETRY_INTERVALS", "")
    assert enqueue_payment("user_123", "1.00", connection=redis).retries_left is None


@pytest.mark.parametrize("path, error", [
    ("tasks.gateways.NoSuchGateway", "no such object"),
    ("nowhere.Gateway", "no such object"),
    ("SandboxGateway", "no such object"),
    ("tasks.payments.Settings", "not a subclass of tasks.gateways.Gateway"),
])
def test_a_wrong_gateway_path_is_named_clearly(redis, path, error):
    with pytest.raises(ValueError, match=f"PAYMENTS_GATEWAY={path!r}.*{error}"):
        load_gateway(redis, Settings(gateway=path))


# --- the sandbox gateway and the fraud rules ------------------------------------------------------------------


def test_the_sandbox_charges_once_per_key_and_replays_the_first_result(redis):
    gateway = SandboxGateway(redis)
    first = gateway.charge("key-1", "user_123", Decimal("49.99"), "USD")
    assert gateway.charge("key-1", "user_123", Decimal("49.99"), "USD") == first
    assert gateway.ledger() == [first]
    with pytest.raises(IdempotencyKeyReused, match="first used for 49.99 USD"):
        gateway.charge("key-1", "user_123", Decimal("50.00"), "USD")
    for _ in range(2):  # a decline is recorded once and replayed as a decline
        with pytest.raises(PaymentDeclined, match="declined"):
            gateway.charge("key-2", "user_123", Decimal("10.13"), "USD")
    assert [charge.status for charge in gateway.ledger()] == [SUCCEEDED, DECLINED]


def test_velocity_counts_each_idempotency_key_once(redis):
    settings = Settings(velocity_max_count=2, velocity_max_total=Decimal("100"))

    def pay(key: str, amount: str, user: str = "user_1") -> None:
        velocity_limit(Payment(user, Decimal(amount), "USD", key), settings, redis)

    pay("a", "10.00")
    pay("a", "10.00")  # the same payment run again: not a second one
    with pytest.raises(FraudRejected, match="over 100 USD"):
        pay("b", "90.01")
    pay("b", "90.00")
    with pytest.raises(FraudRejected, match="made 2 payments"):
        pay("c", "1.00")
    pay("b", "90.00")  # counted already: still passes at the limit
    pay("c", "1.00", user="user_2")  # per user
    counted, cents = velocity_keys("user_3", "USD")
    redis.zadd(counted, {"old": time.time() - 7200})  # two hours ago: outside the one-hour window
    redis.hset(cents, "old", 10000)
    pay("e", "100.00", user="user_3")
    assert redis.zrange(counted, 0, -1) == [b"e"] and redis.hkeys(cents) == [b"e"]
    with pytest.raises(FraudRejected, match="single-payment limit of 5000"):
        amount_limit(Payment("user_1", Decimal("5000.01"), "USD", "d"), Settings(), redis)


# --- workers: bad input, declines, retries, crashes, requeues -----------------------------------------------


def test_a_payment_is_charged_booked_and_receipted(durable, processes):
    redis, url = durable
    job = enqueue_payment("user_123", 49.99, notify_email="ada@example.com", connection=redis)
    processes.finish(processes.rq_worker(url, QUEUE))
    assert job.get_status(refresh=True) == "finished"
    [charge] = succeeded(redis)
    key = job.kwargs["idempotency_key"]
    assert (charge.idempotency_key, charge.user_id, charge.amount, charge.currency) == \
        (key, "user_123", Decimal("49.99"), "USD")
    assert job.return_value()["charge_id"] == job.get_meta()["charge_id"] == charge.charge_id
    assert recorded_payments(redis, "user_123") == {key: charge}
    [email] = email_jobs(redis)
    assert email.args[0] == "ada@example.com" and charge.charge_id in email.args[2]
    assert job.return_value()["email_job_id"] == email.id


def test_a_double_submission_with_the_callers_key_charges_and_receipts_once(durable, processes):
    redis, url = durable
    jobs = [enqueue_payment("user_123", "49.99", idempotency_key="order-42", notify_email="ada@example.com",
                            connection=redis) for _ in range(2)]
    processes.finish(processes.rq_worker(url, QUEUE))
    [charge] = succeeded(redis)
    [email] = email_jobs(redis)
    for job in jobs:
        assert job.get_status(refresh=True) == "finished"
        assert (job.return_value()["charge_id"], job.return_value()["email_job_id"]) == (charge.charge_id, email.id)


def test_final_failures_are_not_retried_and_charge_nothing(durable, processes):
    """Input that bypassed enqueue_payment, a decline and a fraud refusal fail at once despite a Retry."""
    redis, url = durable
    queue = Queue(QUEUE, connection=redis)
    bad = [("user_1", "-5"), ("user_1", "0"), ("user_1", math.nan), ("user_1", "inf"), ("user_1", "1.001"),
           ("user_1", "1000000000000"), ("user_1", "49.99", "XYZ"), ("bad user", "49.99")]
    jobs = [queue.enqueue("tasks.payments.process_payment", *args, retry=Retry(max=3)) for args in bad]
    jobs.append(queue.enqueue("tasks.payments.process_payment", "user_1", "1.00", notify_email="ada@",
                              retry=Retry(max=3)))
    declined = queue.enqueue("tasks.payments.process_payment", "user_2", "20.13", retry=Retry(max=3))
    refused = queue.enqueue("tasks.payments.process_payment", "user_3", "5000.01", retry=Retry(max=3))
    processes.finish(processes.rq_worker(url, QUEUE))
    for job, reason in [*((job, "PaymentValidationError") for job in jobs), (declined, "PaymentDeclined"),
                        (refused, "FraudRejected")]:
        job = Job.fetch(job.id, connection=redis)
        assert job.get_status() == "failed", job.args
        assert job.retries_left == 0
        assert reason in job.latest_result().exc_string
    assert succeeded(redis) == []
    assert [charge.status for charge in SandboxGateway(redis).ledger()] == [DECLINED]


def test_a_transient_gateway_error_is_retried_under_the_same_key(durable, processes, monkeypatch):
    redis, url = durable
    monkeypatch.setenv("PAYMENTS_RETRY_INTERVALS", "0")
    job = enqueue_payment("user_123", "49.99", connection=redis)
    processes.finish(processes.rq_worker(url, QUEUE, env={"PAYMENTS_GATEWAY": "tests.test_payments.FlakyGateway"}))
    assert job.get_status(refresh=True) == "finished"
    assert attempts(redis) == {job.kwargs["idempotency_key"]: 2}
    assert [charge.charge_id for charge in succeeded(redis)] == [job.return_value()["charge_id"]]


def test_sigkill_between_charge_and_bookkeeping_charges_once(durable, processes):
    redis, url = durable
    job = enqueue_payment("user_123", "49.99", notify_email="ada@example.com", connection=redis)
    env = {**FAST_RESCUE, "PAYMENTS_GATEWAY": "tests.test_payments.CrashingGateway"}
    victim = processes.rq_worker(url, QUEUE, burst=False, extra=MONITORING, env=env)
    victim.wait(30)  # killed by its own job, right after the charge
    killed_at = time.monotonic()
    assert len(succeeded(redis)) == 1 and recorded_payments(redis, "user_123") == {}
    processes.rq_worker(url, QUEUE, burst=False, extra=MONITORING, env=env)
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30)
    print(f"rescued and finished {time.monotonic() - killed_at:.1f} s after the kill")
    [charge] = succeeded(redis)
    assert attempts(redis) == {job.kwargs["idempotency_key"]: 2}
    assert redis.hget(job.key, "rescues") == b"1"
    [email] = email_jobs(redis)
    assert email.args[0] == "ada@example.com"
    assert job.return_value()["charge_id"] == charge.charge_id
    assert job.return_value()["email_job_id"] == email.id


@pytest.mark.parametrize("requeue", ["FailedJobRegistry.requeue", "Queue.requeue_failed"])
def test_a_requeue_from_the_dashboard_replays_the_charge(durable, processes, monkeypatch, requeue):
    """The job failed after the gateway charged (its answer was lost); an operator requeues it."""
    redis, url = durable
    monkeypatch.setenv("PAYMENTS_RETRY_INTERVALS", "")
    job = enqueue_payment("user_123", "49.99", connection=redis)
    env = {"PAYMENTS_GATEWAY": "tests.test_payments.FlakyGateway"}
    processes.finish(processes.rq_worker(url, QUEUE, env=env))
    assert job.get_status(refresh=True) == "failed"
    queue = Queue(QUEUE, connection=redis)
    if requeue == "FailedJobRegistry.requeue":
        FailedJobRegistry(queue=queue).requeue(job.id)
    else:
        queue.requeue_failed(job.id)
    processes.finish(processes.rq_worker(url, QUEUE, env=env))
    assert job.get_status(refresh=True) == "finished"
    [charge] = succeeded(redis)
    assert job.return_value()["charge_id"] == charge.charge_id
    assert attempts(redis) == {job.kwargs["idempotency_key"]: 2}


def test_a_rerun_of_a_booked_payment_asks_neither_fraud_rules_nor_the_gateway_again(durable, processes):
    """Run again later (a requeue after the gateway forgot the key, limits lowered meanwhile): the booking decides."""
    redis, url = durable
    job = enqueue_payment("user_123", "49.99", connection=redis)
    processes.finish(processes.rq_worker(url, QUEUE, env={"PAYMENTS_GATEWAY": "tests.test_payments.CountingGateway"}))
    first = job.return_value()["charge_id"]
    Queue(QUEUE, connection=redis).enqueue_job(job)  # the same job again, as a rescue or requeue runs it
    strict = {"PAYMENTS_GATEWAY": "tests.test_payments.CountingGateway", "PAYMENTS_FRAUD_MAX_AMOUNT": "1"}
    processes.finish(processes.rq_worker(url, QUEUE, env=strict))
    assert job.get_status(refresh=True) == "finished"
    assert job.return_value()["charge_id"] == first
    assert attempts(redis) == {job.kwargs["idempotency_key"]: 1}, "the gateway was not called again"
    assert len(succeeded(redis)) == 1


def test_a_rerun_of_a_charge_never_booked_asks_the_gateway_not_the_fraud_rules(durable, processes):
    """Killed between charge and booking, run again after the limits were lowered: the approval given
    before the charge stands, the gateway replays the charge, the job finishes and books it."""
    redis, url = durable
    job = enqueue_payment("user_123", "49.99", notify_email="ada@example.com", connection=redis)
    key = job.kwargs["idempotency_key"]
    processes.rq_worker(url, QUEUE, env={"PAYMENTS_GATEWAY": "tests.test_payments.CrashingGateway"}).wait(30)
    assert len(succeeded(redis)) == 1 and recorded_payments(redis, "user_123") == {}
    Queue(QUEUE, connection=redis).enqueue_job(job)  # the same job again, as a rescue or requeue runs it
    strict = {"PAYMENTS_GATEWAY": "tests.test_payments.CountingGateway", "PAYMENTS_FRAUD_MAX_AMOUNT": "1"}
    processes.finish(processes.rq_worker(url, QUEUE, env=strict))
    assert job.get_status(refresh=True) == "finished", describe(redis, job)
    [charge] = succeeded(redis)
    assert recorded_payments(redis, "user_123") == {key: charge}
    assert attempts(redis) == {key: 2}
    assert redis.keys(APPROVED_PREFIX + "*") == [], "the approval ends with the booking"
    [email] = email_jobs(redis)
    assert email.id == receipt_job_id(key)


def test_receipts_for_keys_with_dots_and_colons_and_for_direct_enqueues(durable, processes):
    """RQ job ids allow no '.' or ':'; the receipt's id is a digest of the key, so any valid key works."""
    redis, url = durable
    keyed = enqueue_payment("user_1", "5.00", idempotency_key="shop.order:42", notify_email="a@example.com",
                            connection=redis)
    direct = Queue(QUEUE, connection=redis).enqueue("tasks.payments.process_payment", "user_2", "6.00",
                                                    notify_email="b@example.com")  # its key: job:<id>
    processes.finish(processes.rq_worker(url, QUEUE))
    for job, key in ((keyed, "shop.order:42"), (direct, f"job:{direct.id}")):
        assert job.get_status(refresh=True) == "finished", describe(redis, job)
        assert job.return_value()["email_job_id"] == receipt_job_id(key)
    assert sorted(email.args[0] for email in email_jobs(redis)) == ["a@example.com", "b@example.com"]


def test_random_sigkills_never_charge_twice(durable, processes):
    """30 payments, 3 workers, a worker SIGKILLed every 0.2-0.8 s: exactly one charge and one receipt per payment."""
    redis, url = durable
    rng = random.Random(4)
    jobs = [enqueue_payment(f"user_{n}", f"{10 + n}.50", notify_email=f"u{n}@example.com",
                            connection=redis) for n in range(30)]
    env = {**FAST_RESCUE, "PAYMENTS_GATEWAY": "tests.test_payments.SlowGateway"}

    def start():
        return processes.rq_worker(url, QUEUE, burst=False, extra=MONITORING, env=env)

    workers = [start() for _ in range(3)]
    kills = 0
    while kills < 16:
        time.sleep(rng.uniform(0.2, 0.8))
        victim = rng.randrange(len(workers))
        processes.kill_group(workers[victim])
        workers[victim].wait(5)
        workers[victim] = start()
        kills += 1
    try:
        wait_for(lambda: all(job.get_status(refresh=True) == "finished" for job in jobs), timeout=45, interval=0.5)
    except AssertionError:
        raise AssertionError(f"unfinished: {[describe(redis, job) for job in jobs if not job.is_finished]}") from None
    keys = [job.kwargs["idempotency_key"] for job in jobs]
    charged = [charge.idempotency_key for charge in succeeded(redis)]
    assert sorted(charged) == sorted(keys), "exactly one charge per payment"
    for job in jobs:
        assert job.return_value()["charge_id"] == job.get_meta()["charge_id"]
    receipts = [email.args[0] for email in email_jobs(redis)]
    assert sorted(receipts) == sorted(f"u{n}@example.com" for n in range(30)), "exactly one receipt per payment"
    calls = attempts(redis)
    rescued = sum(int(redis.hget(job.key, "rescues") or 0) for job in jobs)
    print(f"{kills} kills, {len(jobs)} payments, {sum(calls.values())} gateway calls "
          f"({sum(count > 1 for count in calls.values())} payments charged again and replayed), {rescued} rescues, "
          f"{len(charged)} charges, {len(charged) - len(set(charged))} doubles, {len(receipts)} receipts")
