"""rqplus' own dashboard pages, beside rq-dashboard's: priorities, durability, schedule, workers,
depth chart, bulk requeue of failed jobs and its progress, the audit log, and ``/metrics`` for
Prometheus.

Usage::

    from rqplus.dashboard.views import Dashboard, blueprint
    app.extensions["rqplus.dashboard"] = Dashboard(redis, Masker(), url)
    app.register_blueprint(blueprint)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for
from redis import Redis
from redis.exceptions import RedisError

from rqplus import requeue as runs
from rqplus.connections import redact
from rqplus.dashboard import actions, audit, metrics
from rqplus.dashboard.charts import line_chart
from rqplus.dashboard.masking import Masker
from rqplus.dashboard.payloads import DashboardJob
from rqplus.dashboard.security import app_credentials, current_user
from rqplus.durability import DurabilityReport, cached_check
from rqplus.requeue import Filters

blueprint = Blueprint("rqplus", __name__)

#: Seconds between automatic reloads of the overview (each reload may add a depth sample).
OVERVIEW_REFRESH = 10
#: Audit entries on the audit page, and on the overview.
AUDIT_PAGE, AUDIT_RECENT = 200, 5
#: Matching failed jobs listed on the bulk requeue page (all of them are requeued).
FAILED_SHOWN = 100
#: Seconds between reloads of the bulk requeue progress page while a run is going.
PROGRESS_REFRESH = 1
#: Runs listed on the progress page when none is named.
RUNS_SHOWN = 20


@dataclass
class Dashboard:
    """What every dashboard request needs: the Redis client, the masker, the Redis URL (shown only
    as :attr:`shown_url`)."""

    connection: Redis
    masker: Masker
    url: str

    @property
    def shown_url(self) -> str:
        """The Redis URL as pages show it: without its password, wherever the URL carries it.

        Usage (in a template): ``{{ redis_shown }}``
        """
        return redact(self.url)


def dashboard() -> Dashboard:
    """This app's :class:`Dashboard`.

    Usage: ``dashboard().connection.ping()``
    """
    return current_app.extensions["rqplus.dashboard"]


def actor() -> actions.Actor:
    """The user of this request and their address, for the audit log.

    Usage: ``actions.delete(redis, job_id, actor())``
    """
    return actions.Actor(current_user(), request.remote_addr)


@blueprint.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"durability_report": durability_report, "redis_shown": dashboard().shown_url,
            "user": g.get("user"), "auth_enabled": app_credentials() is not None}


@blueprint.app_template_filter("age")
def age(seconds: float) -> str:
    """A duration for people: ``"42 s"``, ``"7 min"``, ``"3 h"``, ``"2 d"``.

    Usage (in a template): ``{{ (now - when.timestamp())|age }}``
    """
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(int(seconds), 0)} s"


@blueprint.app_template_filter("clock")
def clock(timestamp: float) -> str:
    """A unix time as ``2025-01-31 14:05:09 UTC``.

    Usage (in a template): ``{{ when.timestamp()|clock }}``
    """
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def durability_report() -> DurabilityReport | None:
    """This request's durability report (checked at most once a second per connection pool), or
    None when Redis cannot be read.

    Usage (in a template): ``{% set report = durability_report() %}``
    """
    if "durability" not in g:
        try:
            g.durability = cached_check(dashboard().connection)
        except RedisError:
            g.durability = None
    return g.durability


@blueprint.route("/")
def overview() -> str:
    """Queues by priority with the oldest waiting job of each, durability, the depth chart,
    upcoming rq-scheduler fires, workers and the latest audit entries.

    Usage: ``GET /``
    """
    board = dashboard()
    connection, now = board.connection, time.time()
    # the depth samples carry Redis' clock: the chart's hour is measured on it too
    queues = metrics.all_queues(connection)
    sampled = metrics.sample_depths(connection, queues)
    chart_now = sampled if sampled is not None else metrics.redis_time(connection)
    fires = [(job, when, board.masker.text(job.description), _repeats(job)) for job, when in metrics.scheduled_fires(connection)]
    return render_template(
        "rqplus/overview.html", stats=metrics.queue_stats(connection, queues=queues), fires=fires,
        workers=metrics.workers(connection),
        chart=line_chart(metrics.depth_history(connection, now=chart_now), chart_now - metrics.DEPTH_WINDOW, chart_now),
        entries=audit.entries(connection, AUDIT_RECENT), refresh=OVERVIEW_REFRESH, now=now)


def _repeats(job: DashboardJob) -> Any:
    # rq-scheduler keeps a repeating job's cron string or interval in its meta (a forged job's meta
    # may be anything)
    meta = job.meta if isinstance(job.meta, dict) else {}
    return meta.get("cron_string") or meta.get("interval")


@blueprint.route("/failed")
def failed() -> str:
    """Failed jobs filtered by queue, function and exception type, with how many a bulk requeue takes.

    Usage: ``GET /failed?queue=emails&exception=TimeoutError``
    """
    connection = dashboard().connection
    chosen = _filters(request.args)
    everything = actions.failed_jobs(connection)
    matching = [job for job in everything if job.matches(**chosen)]
    options = {key: sorted({getattr(job, key) for job in everything}) for key in ("queue", "function", "exception")}
    return render_template("rqplus/failed.html", chosen=chosen, options=options, matching=matching[:FAILED_SHOWN],
                           count=len(matching), selection=actions.selection_digest(matching),
                           beyond=actions.beyond_scan(connection), scan_limit=actions.BULK_SCAN_LIMIT)


@blueprint.route("/failed/requeue")
def confirm_requeue() -> str:
    """The confirmation step of a bulk requeue: how many failed jobs match the filters, which
    queues' registries a run goes through (and their size), which of them a run is requeueing
    already (confirming joins it: one run per queue at a time), and the form that starts it.

    Usage: ``GET /failed/requeue?queue=emails&exception=TimeoutError``
    """
    connection = dashboard().connection
    chosen = _filters(request.args)
    matching = actions.failed_jobs(connection, **chosen)
    counts = actions.failed_counts(connection)
    queues = _requeued_queues(chosen, counts)
    return render_template("rqplus/confirm_requeue.html", chosen=chosen, count=len(matching),
                           selection=actions.selection_digest(matching), criteria=Filters(**chosen).describe(),
                           asked=Filters(None, chosen["function"], chosen["exception"]).describe(),
                           scan_limit=actions.BULK_SCAN_LIMIT,
                           queues=[(name, counts.get(name, 0), runs.active(connection, name)) for name in queues])


@blueprint.route("/failed/requeue", methods=["POST"])
def requeue_failed() -> Response:
    """Start requeueing the failed jobs matching the filters in the background (a run per queue,
    each job at its priority; a queue some run requeues already joins that run), if the selection
    shown is still the one the user confirmed (the same job ids, by digest; 409 when it changed
    meanwhile); redirects to the runs' progress.

    Usage: ``POST /failed/requeue`` with the filters, ``selection`` and the CSRF token (the confirmation's form)
    """
    connection = dashboard().connection
    chosen = _filters(request.form)
    matching = actions.failed_jobs(connection, **chosen)
    if request.form.get("selection") != actions.selection_digest(matching):
        shown = request.form.get("expected", "?")
        raise actions.ActionError(409, f"the selection changed: {len(matching)} failed jobs match now, not the "
                                       f"{shown} shown. Review it and confirm again.")
    queues = _requeued_queues(chosen, actions.failed_counts(connection))
    started = [actions.start_requeue(connection, Filters(queue, chosen["function"], chosen["exception"]), actor())
               for queue in queues]
    return redirect(progress_url(started))


def _requeued_queues(chosen: dict[str, str | None], counts: dict[str, int]) -> list[str]:
    # the pages look at the oldest BULK_SCAN_LIMIT of each queue; a run goes through the whole registry
    return [chosen["queue"]] if chosen["queue"] else [name for name, count in counts.items() if count]


def progress_url(started: list[tuple[runs.Run, bool]]) -> str:
    """The progress page of the runs ``actions.start_requeue`` returned, saying which were joined.

    Usage: ``redirect(progress_url([actions.start_requeue(redis, filters, actor())]))``
    """
    return url_for("rqplus.requeue_progress", run=[run.id for run, _ in started],
                   joined=[run.id for run, new in started if not new])


@blueprint.route("/requeue")
def requeue_progress() -> str:
    """Bulk requeues and their progress (done / total, rate, status): the runs named by ``run=``,
    else the latest ones; reloads itself while one is running. ``joined=`` names the runs a
    request joined rather than started (the page says so).

    Usage: ``GET /requeue?run=<run id>``
    """
    named = request.args.getlist("run")
    shown = runs.runs(dashboard().connection, named or None, limit=RUNS_SHOWN)
    going = any(run.running for run in shown)
    return render_template("rqplus/requeue.html", runs=shown, named=bool(named),
                           joined=set(request.args.getlist("joined")), refresh=PROGRESS_REFRESH if going else None)


@blueprint.route("/audit")
def audit_log() -> str:
    """Who did what, newest first.

    Usage: ``GET /audit``
    """
    return render_template("rqplus/audit.html", entries=audit.entries(dashboard().connection, AUDIT_PAGE))


@blueprint.route("/metrics")
def prometheus() -> Response:
    """Queue depth per queue and priority, failed and started jobs, workers, durability: Prometheus text.

    Usage: ``curl -u admin:... http://127.0.0.1:9181/metrics``
    """
    connection = dashboard().connection
    metrics.sample_depths(connection)
    return Response(metrics.prometheus(connection, durability_report()),
                    content_type="text/plain; version=0.0.4; charset=utf-8")


def _filters(values: Any) -> dict[str, str | None]:
    return {key: values.get(key) or None for key in ("queue", "function", "exception")}
