"""Secret masking (rqplus.dashboard.masking): the rules on text and data, properties over random
descriptions (secrets never shown, quotes and brackets still balanced), and every page and JSON
view of a real dashboard app against the private Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from html import unescape

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq.job import JobStatus
from rq.results import Result
from rq.utils import get_call_string
from rq_scheduler import Scheduler

from rqplus import Queue
from rqplus.dashboard.masking import DEFAULT_MASK_KEYS, MASK_KEYS_ENV, Masker, mask_keys, shown
from tests.test_dashboard import app, client, fail  # noqa: F401  (fixtures: a dashboard app on the private Redis)

_CLOSER = {")": "(", "]": "[", "}": "{"}


def balanced(text: str) -> bool:
    """True when the quotes and brackets of ``text`` pair up, read as Python writes a repr:
    string literals in ' or ", backslash escapes inside them, brackets outside them."""
    quote, stack, index = "", [], 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            stack.append(char)
        elif char in _CLOSER and (not stack or stack.pop() != _CLOSER[char]):
            return False
        index += 1
    return not quote and not stack


# --- the rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, masked", [
    # the cases of issue 19
    ("f(api_key='k-1')", "f(api_key='***')"),
    ("Authorization: Bearer eyJhbGciOi.x-y_z", "Authorization: Bearer ***"),
    ("f(passwd='hunter2', auth=('ada', 'pw'))", "f(passwd='***', auth=***)"),
    ("f('redis://app:Pw-1@db:6379/0')", "f('redis://app:***@db:6379/0')"),
    ("f('password=abc', 'token: xyz')", "f('password=***', 'token: ***')"),        # the closing quotes stay
    # the default keys, by substring, any case, with or without separators
    ("f(API_KEY=1, apikey=2, x_api_key=3, api_key_id=4)", "f(API_KEY=***, apikey=***, x_api_key=***, api_key_id=***)"),
    ("{'X-Api-Key': 'k', 'Authorization': 'Basic dTpw', 'Set-Cookie': 'sid=1'}",
     "{'X-Api-Key': '***', 'Authorization': '***', 'Set-Cookie': '***'}"),
    ("f(session_id='s', credentials='c', private_key='p', client_secret='q', cvv=1, iban='DE89', pwd='x')",
     "f(session_id='***', credentials='***', private_key='***', client_secret='***', cvv=***, iban='***', pwd='***')"),
    ("f(PassPhrase='a b', refresh_token='t', jwt='j', card_number='4111')",
     "f(PassPhrase='***', refresh_token='***', jwt='***', card_number='***')"),
    # URL passwords: any scheme, the last "@" of the authority, the user kept; no password, nothing hidden
    ("postgres://u:p@ss@db/app?sslmode=require and amqp://:pw@mq//",
     "postgres://u:***@db/app?sslmode=require and amqp://:***@mq//"),
    ("redis://db:6379/0 https://user@host/x", "redis://db:6379/0 https://user@host/x"),
    # Bearer / Basic credentials anywhere, any case; the credential only
    ("request failed: bearer abc.def rejected", "request failed: bearer *** rejected"),
    ("curl -H 'Authorization: Basic dXNlcjpwYXNz' https://x", "curl -H 'Authorization: Basic ***' https://x"),
    # well-formed: an unbalanced masked value keeps its quotes and brackets after the mask
    ("f('password=abc')", "f('password=***')"),
    ('f("password=a\'b")', 'f("password=***\'")'),
    ("f(password=x-y(1), n=2)", "f(password=***, n=2)"),
    ("f(password=['a', 'b'", "f(password=***[''''"),
])
def test_masking_rules(text: str, masked: str) -> None:
    assert Masker().text(text) == masked
    assert balanced(Masker().text(text)) == balanced(text)


def test_a_url_password_cut_short_by_rqs_description_is_masked_to_the_cut() -> None:
    password = "ab12" * 16
    description = get_call_string("f", (f"redis://default:{password}@db:6379/0", "redis://db:6379/0"), {},
                                  max_length=75)    # as RQ writes job.description
    assert "@" not in description.split(",")[0]     # RQ cut the first argument before its "@"
    assert Masker().text(description) == "f('redis://default:***..., 'redis://db:6379/0')"


def test_data_masks_sensitive_keys_and_every_string() -> None:
    data = {"user": 7, "API-Key": "k", "Authorization": {"scheme": "x"}, "rows": [("dsn", "redis://u:pw@h")],
            "note": "Bearer tok", 3: "three"}
    assert shown(data, Masker()) == {"user": 7, "API-Key": "***", "Authorization": "***",
                                     "rows": [["dsn", "redis://u:***@h"]], "note": "Bearer ***", "3": "three"}


def test_the_key_list_is_the_defaults_changed_by_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(MASK_KEYS_ENV, raising=False)
    assert mask_keys() == DEFAULT_MASK_KEYS
    monkeypatch.setenv(MASK_KEYS_ENV, " PIN, -auth ,ssn,pin")
    assert mask_keys() == tuple(key for key in DEFAULT_MASK_KEYS if key != "auth") + ("pin", "ssn")
    masker = Masker()
    assert masker.data({"pin": 1, "author": "Ada", "password": "x"}) == \
        {"pin": "***", "author": "Ada", "password": "***"}
    monkeypatch.setenv(MASK_KEYS_ENV, "-passwords")
    with pytest.raises(ValueError, match="drops passwords, which no default mask key is"):
        Masker()
    # explicit keys are exactly those; URL passwords and auth credentials are masked whatever the keys
    assert Masker(["pin"]).text("f(pin=1, password=2, url='redis://u:pw@h', h='Bearer t')") == \
        "f(pin=***, password=2, url='redis://u:***@h', h='Bearer ***')"


# --- properties --------------------------------------------------------------------------------

#: Secrets are letters and digits after a marker, so that a leak is found by the marker alone.
SECRET = st.text("abcdefXYZ0123456789", min_size=4, max_size=12).map(lambda s: f"SECR{s}")
SENSITIVE_NAMES = st.sampled_from(["password", "api_key", "X-Api-Key", "Authorization", "auth", "passwd",
                                   "session_id", "client_secret", "cvv", "iban", "cookie", "access_token"])


def pieces(*words: str, size: int) -> st.SearchStrategy[str]:
    """Text made of the characters and words given."""
    return st.lists(st.sampled_from(words), max_size=size).map("".join)


NOISE = pieces(*"ab \\'\"()[]{},:=@/", "\n", "é", "password", "://", "Bearer ", size=12)


def secret_texts(secret: str) -> st.SearchStrategy[str]:
    """A text carrying ``secret`` in a form the masker must find, between random noise."""
    forms = st.sampled_from([f"password={secret}", f"api_key: {secret}", f"'token': '{secret}'",
                             f"redis://app:{secret}@db:6379/0", f"Authorization: Bearer {secret}",
                             f"Basic {secret}", f"https://x/?access_token={secret}&n=1"])
    return st.tuples(NOISE, forms, NOISE).map(lambda parts: f"{parts[0]} {parts[1]} {parts[2]}")


@st.composite
def arguments(draw) -> tuple[str, tuple, dict]:
    """A job's arguments holding one secret (under a sensitive keyword, a sensitive dict key, or in
    a string), among random values; and the secret."""
    secret = draw(SECRET)
    plain = st.recursive(st.one_of(st.integers(), NOISE, st.none()),
                         lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                 st.dictionaries(NOISE, inner, max_size=3)), max_leaves=6)
    where = draw(st.sampled_from(["kwarg", "dict", "text"]))
    args = list(draw(st.lists(plain, max_size=3)))
    kwargs = draw(st.dictionaries(st.sampled_from(["a", "b", "n"]), plain))
    if where == "kwarg":
        kwargs[draw(SENSITIVE_NAMES).replace("-", "_")] = draw(st.one_of(st.just(secret), st.lists(st.just(secret))))
    elif where == "dict":
        args.append({draw(SENSITIVE_NAMES): secret, "note": draw(plain)})
    else:
        args.insert(draw(st.integers(0, len(args))), draw(secret_texts(secret)))
    return secret, tuple(args), kwargs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arguments())
def test_a_description_never_shows_its_secret_and_stays_balanced(drawn) -> None:
    secret, args, kwargs = drawn
    description = get_call_string("tasks.f", args, kwargs)     # as RQ describes a job (uncut)
    assert balanced(description)
    masked = Masker().text(description)
    assert "SECR" not in masked, (description, masked)
    assert balanced(masked), (description, masked)


@settings(max_examples=300, deadline=None)
@given(pieces(*"ab \\'\"()[]{},:=@/*.", "password=", "://u:", "Bearer ", "card=", size=60))
def test_masking_any_text_keeps_its_balance(text: str) -> None:
    """Free text too (exception messages): masking never unbalances what was balanced."""
    masked = Masker().text(text)
    assert balanced(masked) or not balanced(text), (text, masked)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_data_never_shows_a_secret(data) -> None:
    secret = data.draw(SECRET)
    value = data.draw(st.recursive(
        st.one_of(st.integers(), NOISE, secret_texts(secret)),
        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                st.dictionaries(st.one_of(NOISE, SENSITIVE_NAMES), inner, max_size=3),
                                st.builds(lambda key, value: {key: value}, SENSITIVE_NAMES, st.just(secret))),
        max_leaves=8))
    assert "SECR" not in json.dumps(shown(value, Masker()))


def test_masking_takes_linear_time_on_what_the_new_rules_read() -> None:
    """URLs, auth schemes and quotes repeated a million times: masked within the timeout (each
    takes about half a second here; a quadratic pass would take hours)."""
    program = ("from rqplus.dashboard.masking import Masker; m = Masker(); "
               "[m.text(t) for t in ('://a:' * 300_000, 'Bearer ' * 300_000, '://' + ':' * 2_000_000, "
               "'a://b:' + '@' * 2_000_000, chr(39) + 'password=' * 300_000, "
               "'x password=a' + chr(39) + 'b ' * 300_000, "
               "'://u:p@' * 300_000, 'api-' * 500_000, 'f(password=[' + chr(39) + 'a' + chr(39) + ', ' * 300_000, "
               "'://u:' + 'a' * 2_000_000 + '...')]")
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


# --- every view, over HTTP, against the private Redis -------------------------------------------

#: Each secret of the issue's cases, and where the job below carries it.
SECRETS = {
    "argument URL": "Pw-arg-1", "api_key": "K-api-2", "passwd": "P-passwd-3", "auth tuple": "P-auth-4",
    "Authorization header": "T-bearer-5", "Basic in a string": "QmFzaWMtNg", "quoted password": "P-quoted-7",
    "meta cookie": "C-meta-8", "meta session": "S-meta-9", "meta credential": "R-meta-10",
    "meta private_key": "K-meta-11", "meta client_secret": "Q-meta-12", "meta card": "4111-meta-13",
    "meta URL": "P-dsn-14", "meta Bearer": "T-meta-15", "exc Bearer": "T-exc-16", "exc URL": "P-exc-17",
    "exc password": "P-exc-18", "result api_key": "R-res-19", "result URL": "R-res-20", "result Bearer": "R-res-21",
}


def secret_job(redis: Redis):
    s = SECRETS
    return Queue("q", connection=redis).enqueue(
        "tests.jobs.record", f"redis://app:{s['argument URL']}@db:6379/0", f"password={s['quoted password']}",
        api_key=s["api_key"], passwd=s["passwd"], auth=("ada", s["auth tuple"]),
        headers={"Authorization": f"Bearer {s['Authorization header']}"}, note=f"Basic {s['Basic in a string']}",
        meta={"cookie": s["meta cookie"], "session_id": s["meta session"], "credentials": s["meta credential"],
              "private_key": s["meta private_key"], "client_secret": s["meta client_secret"],
              "card": s["meta card"], "dsn": f"postgres://u:{s['meta URL']}@h/db",
              "note": f"Authorization: Bearer {s['meta Bearer']}", "tenant": 7})


def assert_no_secret(body: str, where: str) -> None:
    leaked = [name for name, secret in SECRETS.items() if secret in body]
    assert not leaked, f"{where} shows {leaked}"


def test_the_issues_secrets_are_masked_on_every_view(client: FlaskClient, redis: Redis) -> None:
    s = SECRETS
    failed = secret_job(redis)
    fail(failed, f"Traceback ...\nConnectionError: Authorization: Bearer {s['exc Bearer']} refused by "
                 f"redis://app:{s['exc URL']}@db:6379/0 (password={s['exc password']})")
    finished = secret_job(redis)
    finished.set_status(JobStatus.FINISHED)
    redis.lrem(Queue("q", connection=redis).key, 0, finished.id)
    Queue("q", connection=redis).finished_job_registry.add(finished, 600)
    Result.create(finished, Result.Type.SUCCESSFUL, 600, return_value={
        "api_key": s["result api_key"], "url": f"redis://u:{s['result URL']}@h",
        "log": [f"Bearer {s['result Bearer']}"]})
    Scheduler(connection=redis).enqueue_in(timedelta(minutes=5), "tests.jobs.record",
                                           f"redis://app:{s['argument URL']}@db", api_key=s["api_key"])

    views = {path: client.get(path) for path in (
        f"/rq/0/data/job/{failed.id}.json", f"/rq/0/data/job/{finished.id}.json",
        "/rq/0/data/jobs/q/failed/8/asc/1.json", "/rq/0/data/jobs/q/finished/8/asc/1.json",
        f"/rq/0/view/job/{failed.id}", "/rq/0/view/jobs/q/failed/8/asc/1", "/", "/failed", "/metrics", "/audit")}
    for path, answer in views.items():
        assert answer.status_code == 200, path
        assert_no_secret(unescape(answer.text), path)

    info = views[f"/rq/0/data/job/{failed.id}.json"].json
    assert info["description"] == (
        "tests.jobs.record('redis://app:***@db:6379/0', 'password=***', api_key='***', auth=***, "
        "headers={'Authorization': '***'}, note='Basic ***', passwd='***')")
    assert balanced(info["description"])
    assert json.loads(info["metadata"]) == {
        "cookie": "***", "session_id": "***", "credentials": "***", "private_key": "***", "client_secret": "***",
        "card": "***", "dsn": "postgres://u:***@h/db", "note": "Authorization: Bearer ***", "tenant": 7, "priority": 5}
    assert info["exc_info"].endswith("Authorization: Bearer *** refused by redis://app:***@db:6379/0 (password=***)")
    result = views[f"/rq/0/data/job/{finished.id}.json"].json["result"]
    assert result == {"api_key": "***", "url": "redis://u:***@h", "log": ["Bearer ***"]}
    for registry in ("failed", "finished"):
        listed = views[f"/rq/0/data/jobs/q/{registry}/8/asc/1.json"].json["jobs"][0]
        assert listed["description"] == info["description"], registry
    assert "tests.jobs.record(&#39;redis://app:***@db&#39;, api_key=&#39;***&#39;)" in views["/"].text
