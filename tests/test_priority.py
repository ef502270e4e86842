"""rqplus/priority.py: validation and where a job keeps its priority (pure logic, no Redis)."""

import math

import fakeredis
import pytest
from rq.job import Job

from rqplus.priority import priority_of, validate_priority, with_priority


@pytest.mark.parametrize("value, expected", [(None, 5), (0, 0), (9, 9), (3, 3)])
def test_valid_priorities(value, expected):
    assert validate_priority(value) == expected


@pytest.mark.parametrize("value", ["1", "high", 1.0, math.nan, True, False, b"1", [1]])
def test_non_integers_raise_type_error_naming_the_range(value):
    with pytest.raises(TypeError, match=r"0 \(most urgent\) to 9 \(least urgent\)"):
        validate_priority(value)


def test_nan_is_named_in_the_message():
    with pytest.raises(TypeError, match="got NaN"):
        validate_priority(math.nan)


@pytest.mark.parametrize("value", [-1, 10, 10**6])
def test_out_of_range_raises_value_error(value):
    with pytest.raises(ValueError, match=f"got {value}"):
        validate_priority(value)


def test_with_priority_copies_and_prefers_the_explicit_value():
    meta = {"user": 7, "priority": 2}
    assert with_priority(meta, 0) == {"user": 7, "priority": 0}
    assert with_priority(meta, None) == {"user": 7, "priority": 2}
    assert with_priority(None, None) == {}  # none yet: create_job gives the task's, else 5
    assert with_priority(None, None, 3) == {"priority": 3}
    assert with_priority({"priority": 1}, None, 3) == {"priority": 1}
    assert meta == {"user": 7, "priority": 2}


def test_with_priority_validates_a_priority_given_in_meta():
    with pytest.raises(TypeError):
        with_priority({"priority": "urgent"}, None)


def test_priority_of_a_job_rqplus_never_saw_is_the_default():
    job = Job.create("os.getpid", connection=fakeredis.FakeRedis())
    assert priority_of(job) == 5
    job.meta["priority"] = 1
    assert priority_of(job) == 1
    job.meta["priority"] = "garbage"
    assert priority_of(job) == 5
