"""tasks.logging against a real redis-server: the producer, the sink, the drain job, and consumer
processes SIGKILLed mid-batch."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from redis import Redis

import rqplus
import tasks.logging as events
from tasks.logging import EVENTS_KEY, LEASE_KEY, Consumer, LeaseLost, Sink, drain_events, log_event
from tests.conftest import ROOT, commands_sent, wait_for


def produce(redis: Redis, count: int, event: str = "User logged in") -> list[str]:
    """Log ``count`` events, 1,000 per pipeline; their ids in order."""
    ids = []
    for start in range(0, count, 1000):
        with redis.pipeline(transaction=False) as pipe:
            ids += [log_event(event, connection=pipe, n=n) for n in range(start, min(count, start + 1000))]
            pipe.execute()
    return ids


def lines(sink: Path) -> list[dict]:
    """Every line of the sink as JSON (fails on a line that is not)."""
    return [json.loads(line) for line in sink.read_text().splitlines()]


def consumer_args(redis_server, sink: Path, *extra: str, lease: float = 1) -> list[str]:
    """``python -m tasks.logging`` for ``sink``; a short lease, so a killed consumer's lapses quickly."""
    return [sys.executable, "-m", "tasks.logging", "--url", redis_server.url, "--path", str(sink),
            "--lease-seconds", str(lease), *extra]


# ---------------------------------------------------------------- producer


def test_log_event_is_one_rpush_of_a_json_record(redis):
    redis.config_resetstat()
    event_id = log_event("Payment successful", connection=redis, user_id="user_123", amount=49.99, event="dup")
    commands = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in redis.info("commandstats").items()}
    for own in ("info", "config|resetstat", "config"):  # this test's own commands (Redis 7 names subcommands)
        commands.pop(own, None)
    assert commands == {"rpush": 1}

    [raw] = redis.lrange(EVENTS_KEY, 0, -1)
    record = json.loads(raw)
    assert record["id"] == event_id and len(event_id) == 32
    assert record["event"] == "Payment successful"
    # fields live under "fields": names such as "event" or "id" cannot clobber the record's own
    assert record["fields"] == {"user_id": "user_123", "amount": 49.99, "event": "dup"}
    assert abs(datetime.fromisoformat(record["ts"]) - datetime.now(timezone.utc)) < timedelta(seconds=5)


@pytest.mark.parametrize("event, fields, error, message", [
    ("", {}, ValueError, "non-empty str"),
    ("   ", {}, ValueError, "non-empty str"),
    (None, {}, TypeError, "must be a str, not NoneType"),
    ("x", {"user": object()}, TypeError, "field 'user' of event 'x' cannot be logged"),
    ("x", {"ok": 1, "when": time}, TypeError, "field 'when'"),
    ("x", {"ratio": float("nan")}, TypeError, "field 'ratio'"),
    ("x", {"nested": {"set": {1, 2}}}, TypeError, "field 'nested'"),
    ("x", {"connection": "eth0"}, TypeError, "connection= must be a redis.Redis"),
])
def test_bad_input_raises_and_writes_nothing(redis, redis_server, event, fields, error, message, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    with pytest.raises(error, match=message):
        log_event(event, **fields)
    assert redis.keys("*") == []


def test_the_default_connection_follows_redis_url_at_call_time(redis, redis_server, redis_factory, monkeypatch):
    other = redis_factory()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    first = log_event("User logged in", user_id="user_123")
    monkeypatch.setenv("REDIS_URL", other.url)
    second = log_event("File uploaded", size=3)
    assert [json.loads(r)["id"] for r in redis.lrange(EVENTS_KEY, 0, -1)] == [first]
    assert [json.loads(r)["id"] for r in other.client().lrange(EVENTS_KEY, 0, -1)] == [second]


# ---------------------------------------------------------------- drain


def test_drain_events_writes_every_event_in_order_and_acknowledges_them(redis, tmp_path):
    ids = produce(redis, 2500)
    sink = tmp_path / "logs" / "events.jsonl"  # the directory is created

    assert drain_events(max_batches=2, batch_size=1000, path=sink, connection=redis) == 2000
    assert redis.llen(EVENTS_KEY) == 500
    assert drain_events(batch_size=1000, path=sink, connection=redis) == 500

    written = lines(sink)
    assert [record["id"] for record in written] == ids
    assert written[7]["fields"] == {"n": 7} and written[7]["event"] == "User logged in"
    assert redis.llen(EVENTS_KEY) == 0 and not redis.exists(LEASE_KEY)
    assert drain_events(path=sink, connection=redis) == 0


def test_the_sink_defaults_to_event_log_path(redis, tmp_path, monkeypatch):
    monkeypatch.setenv("EVENT_LOG_PATH", str(tmp_path / "from-env.jsonl"))
    [event_id] = produce(redis, 1)
    assert drain_events(connection=redis) == 1
    assert [record["id"] for record in lines(tmp_path / "from-env.jsonl")] == [event_id]


def test_drain_events_leaves_everything_to_the_consumer_holding_the_lease(redis, tmp_path):
    produce(redis, 10)
    redis.set(LEASE_KEY, "another consumer", px=5000)
    assert drain_events(path=tmp_path / "events.jsonl", connection=redis) == 0
    assert redis.llen(EVENTS_KEY) == 10 and not (tmp_path / "events.jsonl").exists()


def test_a_stop_request_ends_a_drain_between_batches(redis, tmp_path):
    produce(redis, 30)
    consumer = Consumer(redis, tmp_path / "events.jsonl", batch_size=10)
    stop = threading.Event()
    appended = Sink.append

    def append_then_stop(sink: Sink, records: list[bytes]) -> None:  # a SIGTERM arriving mid-drain
        appended(sink, records)
        stop.set()

    assert consumer.acquire()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Sink, "append", append_then_stop)
            assert consumer.drain(stop=stop) == 10
    finally:
        consumer.release()
    assert redis.llen(EVENTS_KEY) == 20, "the written batch is acknowledged, the rest stays queued"


def test_a_consumer_that_lost_its_lease_acknowledges_nothing(redis, tmp_path):
    produce(redis, 10)
    consumer = Consumer(redis, tmp_path / "events.jsonl", batch_size=4)
    assert consumer.acquire()
    redis.set(LEASE_KEY, "a consumer that took over")  # as when this one paused past its lease
    with pytest.raises(LeaseLost):
        consumer.drain()
    assert redis.llen(EVENTS_KEY) == 10  # whatever it wrote stays queued: written again, never lost
    consumer.release()
    assert redis.get(LEASE_KEY) == b"a consumer that took over"


@pytest.mark.parametrize("existing", [b'{"id":"a"}\n{"id":"b"}\n{"id":"c","ev', b'{"id":"half'])
def test_a_half_written_last_line_is_cut_off_before_appending(redis, tmp_path, existing):
    sink = tmp_path / "events.jsonl"
    sink.write_bytes(existing)
    ids = produce(redis, 3)

    assert drain_events(path=sink, connection=redis) == 3

    complete = [json.loads(line)["id"] for line in existing.split(b"\n")[:-1]]
    assert [record["id"] for record in lines(sink)] == complete + ids


def test_drain_events_runs_as_an_rqplus_job_in_a_worker(redis, redis_server, processes, tmp_path):
    ids = produce(redis, 1500)
    sink = tmp_path / "events.jsonl"
    job = rqplus.Queue("events", connection=redis).enqueue("tasks.logging.drain_events")

    output = processes.finish(processes.rq_worker(redis_server.url, "events", env={"EVENT_LOG_PATH": str(sink)}),
                              timeout=30)

    assert job.get_status(refresh=True) == "finished", output
    assert job.return_value() == 1500
    assert [record["id"] for record in lines(sink)] == ids


# ---------------------------------------------------------------- the consumer process


def test_the_consumer_appends_events_as_they_arrive_and_stops_cleanly_on_sigterm(redis, redis_server, processes,
                                                                                  tmp_path):
    sink = tmp_path / "events.jsonl"
    consumer = processes.start(consumer_args(redis_server, sink, lease=10))  # waits 1 s at a time
    wait_for(lambda: redis.exists(LEASE_KEY), timeout=10)

    # idle, it blocks in BLMOVE on the list (woken by the first push), not in a sleep-and-poll loop
    idle = commands_sent(redis_server, 1.5)
    assert any(command.startswith(f"BLMOVE {EVENTS_KEY} {EVENTS_KEY}") for command in idle), idle
    assert not any(command.startswith(("LRANGE", "LPOP", "LLEN")) for command in idle), idle
    for n in range(3):
        event_id = log_event("User logged in", connection=redis, n=n)
        wait_for(lambda: sink.exists() and event_id in sink.read_text(), timeout=5, interval=0.005)

    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(5) == 0, processes.output(consumer)
    assert len(lines(sink)) == 3 and not redis.exists(LEASE_KEY)


def test_the_consumer_rides_out_a_redis_restart(redis_factory, processes, tmp_path):
    server = redis_factory(appendonly="yes")
    sink = tmp_path / "events.jsonl"
    consumer = processes.start(consumer_args(server, sink))
    before = log_event("before", connection=server.client())
    wait_for(lambda: sink.exists() and before in sink.read_text(), timeout=10)

    server.kill()
    time.sleep(0.5)
    server.restart()
    after = log_event("after", connection=server.client())

    wait_for(lambda: after in sink.read_text(), timeout=15)  # the restored lease lapses (1 s), then it goes on
    assert [record["event"] for record in lines(sink)] == ["before", "after"]
    assert "starting over" in processes.output(consumer)


def stopped(pid: int) -> bool:
    """True once the process is in the stopped state (SIGSTOP delivered, not merely sent)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_consumers_killed_mid_batch_lose_no_event(redis, redis_server, processes, tmp_path):
    total, batch = 20_000, 100
    ids = produce(redis, total)
    sink = tmp_path / "events.jsonl"
    args = consumer_args(redis_server, sink, "--batch-size", str(batch))

    def written() -> int:
        return sink.read_bytes().count(b"\n") if sink.exists() else 0

    def acknowledged() -> int:
        return total - redis.llen(EVENTS_KEY)

    # 1: freeze the consumer at random moments until it is caught with a batch written but not yet
    # acknowledged, the moment a crash matters most; then SIGKILL it there
    first = processes.start(args)

    def caught_between_write_and_ack() -> bool:
        processes.kill_group(first, signal.SIGSTOP)
        wait_for(lambda: stopped(first.pid), timeout=5, interval=0.001)
        if written() > acknowledged():
            return True
        processes.kill_group(first, signal.SIGCONT)
        return False

    wait_for(caught_between_write_and_ack, timeout=30, interval=0.002)
    processes.kill_group(first)
    first.wait(5)
    unacknowledged = written() - acknowledged()   # on the sink, still in Redis: to be written again
    assert unacknowledged <= batch, "a consumer acknowledges each batch before writing the next"

    # 2: a restarted consumer, killed without warning once it makes progress
    second = processes.start(args)
    before = acknowledged()
    wait_for(lambda: acknowledged() > before, timeout=10, interval=0.002)
    processes.kill_group(second)
    second.wait(5)
    assert acknowledged() < total

    # 3: a last one drains the rest and exits
    last = processes.start([*args, "--burst"])
    assert last.wait(30) == 0, processes.output(last)

    records = lines(sink)  # every line is whole JSON: a half-written one would fail here
    counts = Counter(record["id"] for record in records)
    assert set(counts) == set(ids)
    duplicates = len(records) - total
    # kill 1's unacknowledged lines are written again; kill 2 may add at most one batch more
    assert unacknowledged <= duplicates <= unacknowledged + batch
    assert redis.llen(EVENTS_KEY) == 0 and not redis.exists(LEASE_KEY)


# ---------------------------------------------------------------- the module name


def test_tasks_logging_does_not_shadow_the_standard_logging_module():
    assert events.logging is logging is sys.modules["logging"]
    assert Path(logging.__file__).parent.parent != ROOT / "tasks" and hasattr(logging, "getLogger")
    # imported by the stdlib and third-party code alike (redis, rq), in a fresh interpreter too
    check = "import tasks.logging, logging, rq; assert logging.getLogger and 'tasks' not in logging.__file__"
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT).returncode == 0


def test_running_the_file_as_a_script_is_refused_with_the_right_command():
    result = subprocess.run([sys.executable, str(ROOT / "tasks" / "logging.py")], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert "python -m tasks.logging" in result.stderr
