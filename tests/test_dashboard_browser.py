"""The dashboard in a real browser: headless Debian Chromium (Playwright) against `rqplus dashboard`
started as users start it (a subprocess of the CLI), a real Redis and real `rq worker` processes.

Chromium is never downloaded: /usr/bin/chromium must exist (CI installs Debian's package); without
it these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq_scheduler import Scheduler

from rqplus import Queue
from rqplus import requeue as runs
from rqplus.dashboard import create_app, metrics
from rqplus.embedded import RedisServer
from tests.conftest import ROOT, Processes, failed_in_bulk, wait_for
from tests.test_dashboard import anonymous_answers, every_route

CHROMIUM = Path("/usr/bin/chromium")
USER, PASSWORD = "admin", "browser-test-password"
XSS = '<img src=x onerror="window.__xss = 1">'
#: Where a test run may refresh the README's screenshot: RQPLUS_SAVE_SCREENSHOT=1.
SCREENSHOT = ROOT / "docs" / "dashboard.png"

sync_api = pytest.importorskip("playwright.sync_api", reason="install the test extras: pip install -e .[test]")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); "
                    "the dashboard's browser tests do not download a browser")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def start_dashboard(procs: Processes, redis_server: RedisServer, **env: str) -> str:
    """`rqplus dashboard --port 0` as a subprocess (the port is chosen by the OS as it binds, so no
    other process can take it in between); returns the base URL it prints."""
    proc = procs.start([sys.executable, "-m", "rqplus.cli", "dashboard", "--url", redis_server.url, "--port", "0"],
                       RQPLUS_DASHBOARD_USERNAME=USER, RQPLUS_DASHBOARD_PASSWORD=PASSWORD, **env)

    def printed_url() -> str | None:
        assert proc.poll() is None, procs.output(proc)
        found = re.search(r"^rqplus dashboard: (http://127\.0\.0\.1:\d+)/ ", procs.output(proc), re.MULTILINE)
        return found.group(1) if found else None

    base = wait_for(printed_url, timeout=20)
    assert urllib.request.urlopen(f"{base}/login", timeout=5).status == 200   # printed once bound
    return base


@pytest.fixture(scope="module")
def live(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard as users start it, for the module's tests: its base URL."""
    procs = Processes(tmp_path_factory.mktemp("dashboard"))
    yield start_dashboard(procs, redis_server)
    procs.stop_all()


@pytest.fixture
def page(browser, live: str) -> Iterator:
    """A fresh browser context on the dashboard; page errors and dialogs fail the test."""
    context = browser.new_context(base_url=live, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()


def log_in(page, next_path: str = "/") -> None:
    page.goto(next_path)
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/login" not in page.url


def job_status(status: str) -> str:
    """The selector of rq-dashboard's job page showing ``status`` in its Status field (the page's
    other text, "Enqueued at" say, must not match)."""
    return f"#job-data p:has(strong:text-is('Status')):has-text('{status}')"


def failed_job(redis: Redis, processes: Processes, url: str, func: str, *args, allowed: str = "tasks", **kwargs) -> Job:
    """A job that really failed in a worker: by default one whose module the worker may not run
    (as after a deploy that forgot RQPLUS_JOB_MODULES), so it can succeed once requeued."""
    job = Queue("q", connection=redis).enqueue(func, *args, **kwargs)
    processes.finish(processes.rq_worker(url, "q", env={"RQPLUS_JOB_MODULES": allowed}))
    assert job.get_status(refresh=True) == JobStatus.FAILED
    return job


def colours(page, png: bytes) -> tuple[int, float]:
    """Distinct colours in a PNG and the share of non-white pixels, measured by the browser's canvas."""
    page.goto("about:blank")
    return tuple(page.evaluate("""async (data) => {
        const img = new Image(); img.src = "data:image/png;base64," + data; await img.decode();
        const canvas = document.createElement("canvas"); canvas.width = img.width; canvas.height = img.height;
        const ctx = canvas.getContext("2d"); ctx.drawImage(img, 0, 0);
        const px = ctx.getImageData(0, 0, img.width, img.height).data;
        const seen = new Set(); let ink = 0;
        for (let i = 0; i < px.length; i += 4) {
            seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
            if (px[i] < 240 || px[i + 1] < 240 || px[i + 2] < 240) ink++;
        }
        return [seen.size, ink / (px.length / 4)];
    }""", base64.b64encode(png).decode()))


def test_log_in_requeue_a_failed_job_and_a_worker_runs_it(page, redis: Redis, redis_server: RedisServer,
                                                          processes: Processes) -> None:
    queue = Queue("q", connection=redis)
    job = failed_job(redis, processes, redis_server.url, "tests.jobs.record", "requeued", priority=0)
    later = queue.enqueue("tests.jobs.record", "waiting", priority=5)

    log_in(page, f"/rq/0/view/job/{job.id}")
    page.wait_for_selector(job_status("failed"))
    page.click("#requeue-job-btn")
    page.wait_for_selector(job_status("queued"), timeout=10_000)
    # requeued at its own priority: ahead of the priority-5 job, not appended behind it
    assert [i.decode() for i in redis.lrange(queue.key, 0, -1)] == [job.id, later.id]

    processes.finish(processes.rq_worker(redis_server.url, "q"))
    page.wait_for_selector(job_status("finished"), timeout=10_000)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert page.dialogs == []


def test_html_in_job_data_is_shown_as_text_and_never_runs(page, redis: Redis, redis_server: RedisServer,
                                                          processes: Processes) -> None:
    job = failed_job(redis, processes, redis_server.url, "tests.jobs.fail", XSS, meta={"note": XSS},
                     allowed="tests.jobs")
    log_in(page, "/rq/0/view/jobs/q/failed/8/asc/1")
    page.wait_for_selector(f"#jobs tr[data-job-id='{job.id}']")
    assert page.locator("#jobs img").count() == 0
    assert XSS in page.inner_text("#jobs")          # args and exception text, literally

    page.goto(f"/rq/0/view/job/{job.id}")
    page.wait_for_selector(job_status("failed"))
    assert page.locator("#job-data img").count() == 0
    text = page.inner_text("#job-data")
    assert text.count("window.__xss") >= 3            # description, metadata, exception info
    assert page.evaluate("window.__xss") is None and page.dialogs == []


def test_cross_site_posts_are_refused_and_change_nothing(page, redis: Redis, redis_server: RedisServer,
                                                         processes: Processes, live: str) -> None:
    job = failed_job(redis, processes, redis_server.url, "tests.jobs.record", "stays failed")
    log_in(page)
    # a logged-in browser's cookies, another site's Origin, no token
    answer = page.request.post(f"/rq/job/{job.id}/requeue", headers={"Origin": "http://evil.example"})
    assert answer.status == 403 and "cross-site request refused" in answer.text()
    # the same cookies and this site's Origin, still no token
    answer = page.request.post(f"/rq/job/{job.id}/requeue", headers={"Origin": live})
    assert answer.status == 403 and "CSRF token" in answer.text()
    # an attacker's page submitting a form to the dashboard (served by Playwright as another site)
    page.route("http://evil.example/", lambda route: route.fulfill(content_type="text/html", body=(
        f'<form method="post" action="{live}/rq/requeue/q"></form><script>document.forms[0].submit()</script>')))
    with page.expect_response(f"{live}/rq/requeue/q") as posted:
        page.goto("http://evil.example/")
    # 401: SameSite=Lax kept the session cookie off the cross-site POST (were it sent, the two
    # checks above answer 403)
    assert posted.value.status in (401, 403)
    assert page.request.get("/rq/requeue/q").status == 405
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert FailedJobRegistry("q", connection=redis).get_job_ids() == [job.id]
    assert redis.llen("rq:queue:q") == 0


def test_the_real_server_refuses_anonymous_requests_on_every_route(live: str, redis_server: RedisServer) -> None:
    # the same routes as tests/test_dashboard.py checks through Flask's test client, here over HTTP
    # against the running `rqplus dashboard` (waitress in front, as users run it)
    for endpoint, method, path in every_route(create_app(redis_server.url, auth=False)):
        request = urllib.request.Request(live + path, method=method, data=b"" if method == "POST" else None)
        try:
            status = urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status in anonymous_answers(endpoint, method, wants_html=False), \
            f"{method} {path} answered {status} without credentials"


def test_main_pages_render_and_are_not_blank(page, redis: Redis, redis_server: RedisServer,
                                             processes: Processes, tmp_path: Path) -> None:
    failed_job(redis, processes, redis_server.url, "tests.jobs.record", "charge order 42", card="4111 1111 1111 1111")
    queue, emails = Queue("q", connection=redis), Queue("emails", connection=redis)
    for index in range(14):
        (emails if index % 2 else queue).enqueue("tests.jobs.record", f"job {index}", priority=(0, 2, 5, 5, 9)[index % 5])
    Scheduler(connection=redis).cron("0 3 * * *", "tests.jobs.record", args=["nightly report"], queue_name="q")
    processes.rq_worker(redis_server.url, "reports", burst=False)   # an idle worker in the workers table
    wait_for(lambda: metrics.workers(redis))
    now = metrics.redis_time(redis)   # the sampler's entries carry Redis' clock
    for minute in range(60, 0, -2):  # an hour of depth samples, as the sampler records them every 10 s
        redis.delete(metrics.DEPTH_LOCK_KEY)
        redis.xadd(metrics.DEPTH_KEY, {"q": 20 + (minute * 7) % 25, "emails": 4 + (minute * 3) % 11},
                   id=f"{int((now - minute * 60) * 1000)}-0")

    log_in(page)
    for path, ready in (("/", "#depth-chart polyline"), ("/rq/", "#queues tr[data-role=queue]"),
                        ("/failed", "#failed-jobs")):
        page.goto(path)
        page.wait_for_selector(ready)
        shot = page.screenshot(full_page=True)
        (tmp_path / f"{path.strip('/') or 'overview'}.png").write_bytes(shot)
        if path == "/" and os.environ.get("RQPLUS_SAVE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(page.screenshot(full_page=True))
        distinct, ink = colours(page, shot)
        assert distinct > 50 and ink > 0.03, f"{path} looks blank: {distinct} colours, {ink:.1%} non-white"


def test_the_workers_table_links_each_running_job_to_its_page(page, redis: Redis, redis_server: RedisServer,
                                                              processes: Processes) -> None:
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "sleeping", 30)
    processes.rq_worker(redis_server.url, "q", burst=False)
    wait_for(lambda: any(w.current_job_id == job.id for w in metrics.workers(redis)))
    log_in(page)
    cell = page.locator("#workers .running-now")
    assert cell.locator(".running-count").inner_text() == "1"
    link = cell.locator(f"a:has-text('{job.id}')")
    assert link.count() == 1 and "tests.jobs.record" in cell.inner_text()
    link.click()
    page.wait_for_url(f"**/rq/0/view/job/{job.id}")
    page.wait_for_selector(job_status("started"))
    assert page.dialogs == []


def test_bulk_requeue_button_asks_to_confirm_then_shows_progress_until_done(page, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    jobs = failed_in_bulk(queue, 2000)
    log_in(page, "/failed?queue=q")
    page.wait_for_selector("#match-count")
    with page.expect_navigation(url=re.compile(r"/failed/requeue\?queue=q")):
        page.click("#bulk-requeue-btn")
    assert page.inner_text("#confirm-count") == "2,000" and runs.runs(redis) == []   # nothing started yet
    with page.expect_navigation(url=re.compile(r"/requeue\?run=")):
        page.click("#confirm-requeue-btn")
    row = page.locator("#requeue-runs tr[data-run]")
    assert row.count() == 1 and "q" in row.inner_text()
    # the page reloads itself (meta refresh) until the run is done
    page.wait_for_selector("#requeue-runs tr[data-status=done]", timeout=60_000)
    assert page.inner_text("#requeue-runs tr[data-run] .run-done") == "2,000"
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in jobs)
    assert page.dialogs == []


@pytest.fixture
def slow_requeues(browser, redis_server: RedisServer, tmp_path: Path) -> Iterator:
    """A page on a second `rqplus dashboard` whose bulk requeues pause 4 s between batches
    (RQPLUS_REQUEUE_THROTTLE), so that a run is still going when the test clicks again."""
    procs = Processes(tmp_path)
    context = browser.new_context(base_url=start_dashboard(procs, redis_server, RQPLUS_REQUEUE_THROTTLE="4"))
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    procs.stop_all()


def test_requeue_all_asks_to_confirm_and_a_second_click_joins_the_running_run(slow_requeues, redis: Redis) -> None:
    page, queue = slow_requeues, Queue("q", connection=redis)
    failed_in_bulk(queue, 3000)                                   # 3 batches: at least 8 s with the pauses
    log_in(page, "/rq/0/view/jobs/q/failed/8/asc/1")
    page.wait_for_selector("#jobs tr[data-job-id]")
    with page.expect_navigation(url=re.compile(r"/failed/requeue\?queue=q")):
        page.click("#requeue-all-btn")                             # rq-dashboard's button: the confirmation first
    assert page.inner_text("#confirm-count") == "3,000" and page.locator(".already-running").count() == 0
    with page.expect_navigation(url=re.compile(r"/requeue\?run=")):
        page.click("#confirm-requeue-btn")
    run_id = page.locator("#requeue-runs tr[data-run]").get_attribute("data-run")
    assert page.locator("#requeue-runs tr[data-status=running]").count() == 1

    page.goto("/rq/0/view/jobs/q/failed/8/asc/1")                  # a second click, while it runs
    page.wait_for_selector("#jobs tr[data-job-id]")
    with page.expect_navigation(url=re.compile(r"/failed/requeue\?queue=q")):
        page.click("#requeue-all-btn")
    assert page.locator(f".already-running[data-run='{run_id}']").count() == 1
    with page.expect_navigation(url=re.compile(rf"/requeue\?run={run_id}&joined={run_id}")):
        page.click("#confirm-requeue-btn")
    assert "you joined it" in page.inner_text(f".joined-run[data-run='{run_id}']")
    page.wait_for_selector("#requeue-runs tr[data-status=done]", timeout=60_000)
    assert page.inner_text("#requeue-runs tr[data-run] .run-done") == "3,000"
    assert [run.id for run in runs.runs(redis)] == [run_id] and queue.count == 3000 and page.dialogs == []
