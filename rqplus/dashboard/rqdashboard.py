"""rq-dashboard 0.9 mounted by rqplus, its gaps closed without forking it.

Three kinds of change, each listed with why:

* :data:`TEMPLATE_PATCHES`, applied as rq-dashboard's templates are loaded (a Jinja loader in
  front of the blueprint's own). Each must apply, so a release that moves the patched text fails
  at start-up instead of silently reopening a hole.
* :data:`OVERRIDES`: rq-dashboard endpoints whose view function rqplus replaces, same URL.
* in :func:`mount`, settings and module functions of rq-dashboard that its own views read: the
  URL it shows, its Redis client, its serializer, and the page reader :func:`page_of_jobs`.

Usage::

    from rqplus.dashboard.rqdashboard import mount
    from rqplus.dashboard.views import Dashboard
    app.extensions["rqplus.dashboard"] = Dashboard(connect(url), Masker(), url)   # as create_app does
    mount(app, prefix="/rq")
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rq_dashboard
import rq_dashboard.web as rqd
from flask import Flask, Response, current_app, jsonify, make_response, redirect, render_template, request, url_for
from jinja2 import BaseLoader, ChoiceLoader, Environment, FileSystemLoader
from redis import Redis
from rq import VERSION as RQ_VERSION
from rq import Queue as RQQueue
from rq.results import Result
from rq.utils import as_text
from werkzeug.exceptions import MethodNotAllowed, NotFound

from rqplus.dashboard import actions
from rqplus.dashboard.metrics import workers
from rqplus.dashboard.masking import shown
from rqplus.dashboard.payloads import DashboardJob
from rqplus.dashboard.security import wants_html
from rqplus.dashboard.views import actor, dashboard, progress_url
from rqplus.queue import Queue
from rqplus.requeue import Filters
from rqplus.serializers import SafeSerializer

RQ_DASHBOARD_TEMPLATES = Path(rq_dashboard.blueprint.root_path) / "templates"
#: The most jobs a page of rq-dashboard's job lists holds: a larger page size asked for is served
#: as this one.
MAX_PAGE_SIZE = 100
#: Page numbers and sizes in rq-dashboard's URLs: whole numbers >= 1, at most this many digits
#: (leading zeros aside), so every index computed from them fits Redis' 64-bit integers.
_PAGE_NUMBER_DIGITS = 15
_PAGE_NUMBER = re.compile(rf"0*[1-9][0-9]{{0,{_PAGE_NUMBER_DIGITS - 1}}}")

#: (template, pattern, replacement, why), in order. ``"*"`` is every rq-dashboard template.
TEMPLATE_PATCHES: list[tuple[str, str, str, str]] = [
    ("rq_dashboard/jobs.html", r"\$\('<div/>'\)\.text\(([\w.]+)\)\.html\(\)", r"\1",
     "the two values it pre-escaped by hand are escaped by the rule below (no double escaping)"),
    ("*", r"<%=", "<%-",
     "underscore's <%= inserts raw HTML (stored XSS from job data, queue and worker names); <%- escapes"),
    ("rq_dashboard/base.html", r'<script type="text/javascript">(\s*\{% include "rq_dashboard/inline_js.html" %\})',
     r'<script nonce="{{ csp_nonce() }}">\1', "the inline script carries the CSP nonce, so injected ones cannot run"),
    ("rq_dashboard/base.html", r"url_for\('static', filename='favicon.ico'\)", "url_for('rq_dashboard.favicon')",
     "the favicon comes from rq-dashboard's own route (the host app's static folder has none)"),
    ("rq_dashboard/base.html", r'(\{% include "rq_dashboard/navbar.html" %\})', r'\1{% include "rqplus/banner.html" %}',
     "a red banner on every page when Redis is not durable"),
    ("rq_dashboard/navbar.html", r"(\s*</ul>)", r'{% include "rqplus/nav_links.html" %}\1',
     "links to rqplus' pages and a log-out button"),
    ("rq_dashboard/scripts/jobs.js", r"\$\(this\)\.val\('\{\{ queue\.name \}\}'\)", "$(this).val({{ queue.name|tojson }})",
     "the queue name (from the URL) becomes a JSON string literal, not text pasted into JavaScript"),
    ("rq_dashboard/jobs.html", r"url_for\('rq_dashboard\.requeue_all', queue_name=queue\.name\)",
     "url_for('rqplus.confirm_requeue', queue=queue.name)",
     "Requeue All leads to the bulk requeue's confirmation page (how many jobs, a run already going)"),
    ("rq_dashboard/scripts/jobs.js",
     r"modalConfirm\('requeue all', function\(\) \{\s*\$\.post\(\$this\.attr\('href'\), "
     r"function\(data\) \{\}\);\s*\}\);",
     "window.location = $this.attr('href');",
     "the button's click goes to that page, whose form starts the background requeue (or joins the one going)"),
]


class PatchedTemplates(BaseLoader):
    """rq-dashboard's templates with :data:`TEMPLATE_PATCHES` applied."""

    def __init__(self, root: Path = RQ_DASHBOARD_TEMPLATES) -> None:
        self.files = FileSystemLoader(str(root))

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        """The template's source with its patches applied; ``RuntimeError`` if one no longer applies.

        Usage: ``PatchedTemplates().get_source(app.jinja_env, "rq_dashboard/base.html")``
        """
        source, filename, uptodate = self.files.get_source(environment, template)
        for target, pattern, replacement, why in TEMPLATE_PATCHES:
            if target == template or (target == "*" and template.startswith("rq_dashboard/")):
                source, count = re.subn(pattern, replacement, source, count=0 if target == "*" else 1)
                if not count and target != "*":
                    raise RuntimeError(f"rq-dashboard's {template} changed: the rqplus patch ({why}) no longer applies")
        return source, filename, uptodate

    def list_templates(self) -> list[str]:
        """rq-dashboard's template names.

        Usage: ``"rq_dashboard/job.html" in PatchedTemplates().list_templates()``
        """
        return self.files.list_templates()


def mount(app: Flask, prefix: str) -> None:
    """Register rq-dashboard's blueprint at ``prefix`` with rqplus' patches and overrides, reading
    the Redis of the app's :class:`~rqplus.dashboard.views.Dashboard` (set it first).

    Usage: ``mount(app, "/rq")``
    """
    board = app.extensions["rqplus.dashboard"]
    # rq-dashboard prints its configured URLs in its instance selector, hiding only a password
    # written before "@" (not redis-py's ?password=): it is given the URL as shown, and the
    # dashboard's client instead of one it would build from that URL (its setup_rq_connection)
    app.config["RQ_DASHBOARD_REDIS_URL"] = (board.shown_url,)
    app.redis_conn = board.connection
    # rq-dashboard reads its serializer from this module-level setting (its CLI's --serializer):
    # every job it loads itself goes through the safe loader
    rqd.config.serializer = SafeSerializer
    app.config["RQ_DASHBOARD_JSON_ENCODER"] = _ReprEncoder  # job_info's meta may hold non-JSON objects
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=prefix)
    # rq-dashboard's list_jobs (kept for its pagination links) reads its page through this module
    # function: the bounded, pipelined page_of_jobs instead (see there)
    assert callable(rqd.get_queue_registry_jobs_count), "rq-dashboard's get_queue_registry_jobs_count moved"
    rqd.get_queue_registry_jobs_count = page_of_jobs
    # rq-dashboard lists and counts queues with the Queue its module imported from rq: rqplus.Queue,
    # so a queue's count includes its backlog (rq.Queue counts RQ's list alone, see rqplus.priority)
    assert rqd.Queue is RQQueue or rqd.Queue is Queue, "rq-dashboard no longer uses rq's Queue"
    rqd.Queue = Queue
    # rq-dashboard's push_rq_connection builds a new Redis client (a new pool, new TCP connections)
    # on every request naming an instance, i.e. every JSON poll, and swaps app.redis_conn under the
    # other server threads. rqplus serves one Redis: the dashboard's client set above is kept.
    hooks = app.before_request_funcs.setdefault(rq_dashboard.blueprint.name, [])
    hooks[:] = [_check_instance if hook is rqd.push_rq_connection else hook for hook in hooks]
    assert _check_instance in hooks, "rq-dashboard's push_rq_connection hook moved"
    for endpoint, view in OVERRIDES.items():
        assert endpoint in app.view_functions, endpoint
        app.view_functions[endpoint] = view
    loader = PatchedTemplates()
    # the app's loader is searched before the blueprint's, so the patched copies win
    app.jinja_loader = ChoiceLoader([app.jinja_loader, loader])
    for template in loader.list_templates():  # fail now, not on the first page view
        loader.get_source(app.jinja_env, template)


def _check_instance() -> None:
    """rq-dashboard's URLs name a Redis by index; rqplus serves one, index 0: others are 404."""
    instance = (request.view_args or {}).get("instance_number")
    if instance is not None and instance != 0:
        raise NotFound(f"no Redis instance {instance}: this dashboard shows one, instance 0")


class _ReprEncoder(json.JSONEncoder):
    def default(self, o: Any) -> str:
        return repr(o)


def _page_context(instance_number: int) -> dict[str, Any]:
    """What rq-dashboard's page templates expect besides their own values."""
    return dict(current_instance=instance_number,
                instance_list=rqd.escape_format_instance_list(current_app.config["RQ_DASHBOARD_REDIS_URL"]),
                rq_url_prefix=url_for("rq_dashboard.queues_overview"), rq_dashboard_version=rqd.rq_dashboard_version,
                rq_version=RQ_VERSION, deprecation_options_usage=current_app.config.get("DEPRECATED_OPTIONS", False),
                enable_delete=not current_app.config.get("RQ_DASHBOARD_DISABLE_DELETE"))


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    """``payload`` as a JSON response that browsers do not cache (as rq-dashboard answers).

    Usage: ``return _json({"status": "OK"})``
    """
    response = make_response(jsonify(payload), status)
    response.headers["Cache-Control"] = "no-store"
    return response


# rq-dashboard: Job.fetch with the stock unpickler, HTTP 500 for an unknown id. Here: loaded
# safely, 404 with a message.
def job_view(instance_number: int, job_id: str) -> Response:
    """The job page (its data comes from :func:`job_info`); 404 for an unknown job.

    Usage: ``GET /rq/0/view/job/<job_id>``
    """
    job = actions.fetch(dashboard().connection, job_id)
    response = make_response(render_template("rq_dashboard/job.html", id=job.id, **_page_context(instance_number)))
    response.headers["Cache-Control"] = "no-store"
    return response


# rq-dashboard: raw description, meta, result and exception text, the job fetched by the stock
# unpickler (HTTP 500 for an unknown id). Here: the same fields from one safe fetch, secrets
# masked, objects the dashboard does not load shown as <not loaded: ...> (a meta refused whole:
# with the reason); 404 for an unknown id.
def job_info(instance_number: int, job_id: str) -> Response:
    """One job's fields as rq-dashboard's job page reads them, masked.

    Usage: ``GET /rq/0/data/job/<job_id>.json``
    """
    connection, masker = dashboard().connection, dashboard().masker
    job = actions.fetch(connection, job_id)
    latest = job.latest_result()
    info: dict[str, Any] = {
        "id": job.id, "created_at": rqd.serialize_date(job.created_at),
        "enqueued_at": rqd.serialize_date(job.enqueued_at), "started_at": rqd.serialize_date(job.started_at),
        "ended_at": rqd.serialize_date(job.ended_at), "origin": job.origin, "status": job.get_status(refresh=False),
        "result": shown(latest.return_value if latest and latest.type == Result.Type.SUCCESSFUL else None, masker),
        "exc_info": masker.text(actions.exc_text(job, latest)),
        "description": masker.text(rqd.format_job_description(job)),
        "metadata": json.dumps(shown({"unserialized": f"<not loaded: {job.meta_error}>"} if job.meta_error
                                     else job.meta, masker), cls=_ReprEncoder),
    }
    dependency_ids = [as_text(key).rsplit(":", 1)[-1] for key in job.dependency_ids]
    if dependency_ids:
        with connection.pipeline(transaction=False) as pipe:
            for dependency_id in dependency_ids:
                pipe.exists(DashboardJob.key_for(dependency_id))
            present = pipe.execute()
        info["depends_on"] = dependency_ids
        info["depends_on_status"] = ["active" if found else "expired" for found in present]
    return _json(info)


# rq-dashboard: descriptions and exception texts as stored, secrets included; any page size;
# HTTP 500 for a page or page size that is not a positive number, or an unknown registry, and
# 503 for one past Redis' 64-bit indexes. Here: masked, at most MAX_PAGE_SIZE jobs, 404.
def list_jobs(instance_number: int, queue_name: str, registry_name: str, per_page: str, order: str,
              page: str) -> Response:
    """A page of a queue's or registry's jobs, as rq-dashboard lists them, masked; a page size
    above :data:`MAX_PAGE_SIZE` is served as that size, a page past the end is empty.

    Usage: ``GET /rq/0/data/jobs/<queue>/<registry>/<per_page>/<order>/<page>.json``
    """
    if registry_name != "queued" and registry_name not in actions.REGISTRIES:
        raise actions.ActionError(404, f"no registry {registry_name!r}: one of queued, {', '.join(actions.REGISTRIES)}")
    if not (_PAGE_NUMBER.fullmatch(per_page) and _PAGE_NUMBER.fullmatch(page)):
        raise actions.ActionError(404, f"page {page!r} of {per_page!r} jobs: both must be whole numbers from 1 to "
                                       f"{10 ** _PAGE_NUMBER_DIGITS - 1}")
    return _json(rqd.list_jobs.__wrapped__(instance_number, queue_name, registry_name,
                                           min(int(per_page), MAX_PAGE_SIZE), order, int(page)))


# rq-dashboard: reads each job of the page in its own round trip (then its latest result in
# another), and for a page past the end asks for a range that wraps around to the whole list.
# Here (rq-dashboard's list_jobs calls it for the page it lists): the page's own ids only, its
# jobs and their latest results in one pipelined round trip each, masked.
def page_of_jobs(queue_name: str, registry_name: str, offset: int, per_page: int, order: str,
                 connection: Redis) -> tuple[int, list[dict[str, Any]]]:
    """How many jobs a queue (``registry_name`` "queued") or one of its registries holds, and the
    ``per_page`` of them from ``offset`` on (``order`` "dsc": counted from the newest), as
    rq-dashboard lists them, masked.

    Usage: ``total, jobs = page_of_jobs("emails", "failed", 0, 8, "dsc", redis)``
    """
    if registry_name == "queued":  # the RQ list, then the backlog, in run order
        queue = Queue(queue_name, connection=connection)
        total = queue.count

        def read(first: int, last: int) -> list:
            return queue.get_job_ids(first, last - first + 1)
    else:
        key = actions.REGISTRIES[registry_name](queue_name, connection=connection).key
        total = connection.zcard(key)

        def read(first: int, last: int) -> list:
            return connection.zrange(key, first, last)
    # the page's bounds, inside the list: negative ones would count from the other end
    last = total - 1 - offset if order == "dsc" else min(offset + per_page, total) - 1
    first = max(last - per_page + 1, 0) if order == "dsc" else offset
    job_ids = [as_text(job_id) for job_id in read(first, last)] if first <= last else []
    jobs = [job for job in actions.fetch_many(connection, job_ids) if job is not None]
    masker = dashboard().masker
    listed = [dict(id=job.id, created_at=rqd.serialize_date(job.created_at),
                   started_at=rqd.serialize_date(job.started_at), ended_at=rqd.serialize_date(job.ended_at),
                   exc_info=masker.text(exc_text), description=masker.text(rqd.format_job_description(job)))
              for job, exc_text in zip(jobs, actions.exc_texts(connection, jobs))]
    return total, listed[::-1] if order == "dsc" else listed


# rq-dashboard: loads each busy worker's job with the stock unpickler and unpickles its arguments
# for the call string. Here: the job's stored description, masked.
def list_workers(instance_number: int) -> Response:
    """Every worker with its state and current job, as rq-dashboard's workers page reads them.

    Usage: ``GET /rq/0/data/workers.json``
    """
    connection, masker = dashboard().connection, dashboard().masker
    listed = []
    for worker in workers(connection):
        current: Any = "idle"
        if worker.current_job_id:
            try:
                job = actions.fetch(connection, worker.current_job_id)
            except actions.ActionError:
                job = None
            description = masker.text(job.description) if job else "(gone)"
            current = dict(job_id=worker.current_job_id, description=description, call_string=description,
                           created_at=rqd.serialize_date(job.created_at) if job else None)
        listed.append(dict(name=worker.name, queues=worker.queues, state=worker.state, current_job=current,
                           last_heartbeat=rqd.serialize_date(worker.last_heartbeat), worker_class=worker.kind))
    return _json({"workers": listed})


# rq-dashboard: requeue appends at the tail, HTTP 500 for an unknown or non-failed job. Here: at
# the job's priority, 404 / 409 with a message, audited.
def requeue_job_view(job_id: str) -> Response:
    """Requeue one failed job at its priority (POST).

    Usage: ``POST /rq/job/<job_id>/requeue`` with the CSRF token
    """
    actions.requeue(dashboard().connection, job_id, actor())
    return _json({"status": "OK"})


# rq-dashboard: accepts GET, so a link or <img> could requeue everything, and requeues them all
# within the request (minutes for 100k jobs), as many at once as requests come. Here: POST only
# (the CSRF and same-origin checks apply), a background run at each job's priority (audited at its
# start and end), answered at once; while a run goes through the queue, a request joins it.
# (The page's Requeue All button leads to the confirmation page first, see TEMPLATE_PATCHES.)
def requeue_all(queue_name: str) -> Response:
    """Start requeueing every failed job of a queue in the background, each at its priority, or
    join the run doing it already (POST only): a browser form is redirected to the progress page,
    scripts get JSON naming it (``joined``: true when the run was already going).

    Usage: ``POST /rq/requeue/<queue>`` with the CSRF token -> ``{"status": "OK", "run": ..., "progress": ...}``
    """
    if request.method != "POST":
        raise MethodNotAllowed(valid_methods=["POST"], description="requeue-all changes state: POST only")
    run, started = actions.start_requeue(dashboard().connection, Filters(queue_name), actor())
    progress = progress_url([(run, started)])
    if wants_html():
        return redirect(progress)
    return _json({"status": "OK", "run": run.id, "total": run.total, "joined": not started, "progress": progress})


# rq-dashboard: Job.fetch with the stock unpickler, ERROR without a message. Here: safe, 404, audited.
@rqd.check_delete_enable  # DISABLED when RQ_DASHBOARD_DISABLE_DELETE is set, as in rq-dashboard
def delete_job_view(job_id: str) -> Response:
    """Delete one job (POST).

    Usage: ``POST /rq/job/<job_id>/delete`` with the CSRF token
    """
    actions.delete(dashboard().connection, job_id, actor())
    return _json({"status": "OK"})


# rq-dashboard: deletes each job through the stock unpickler. Here: safe, audited, 404 for an
# unknown registry.
@rqd.check_delete_enable
def empty_queue(queue_name: str, registry_name: str) -> Response:
    """Delete every job of a queue or of one of its registries (POST).

    Usage: ``POST /rq/queue/<queue>/failed/empty`` with the CSRF token
    """
    count = actions.empty(dashboard().connection, queue_name, registry_name, actor())
    return _json({"status": "OK", "count": count})


# rq-dashboard: unaudited. Here: the same compaction, audited.
def compact_queue(queue_name: str) -> Response:
    """Drop ids of vanished jobs from a queue (POST).

    Usage: ``POST /rq/queue/<queue>/compact`` with the CSRF token
    """
    actions.compact(dashboard().connection, queue_name, actor())
    return _json({"status": "OK"})


#: rq-dashboard endpoint -> the view rqplus serves there instead (why: above each function).
OVERRIDES: dict[str, Callable[..., Any]] = {
    "rq_dashboard.job_view": job_view,
    "rq_dashboard.job_info": job_info,
    "rq_dashboard.list_jobs": list_jobs,
    "rq_dashboard.list_workers": list_workers,
    "rq_dashboard.requeue_job_view": requeue_job_view,
    "rq_dashboard.requeue_all": requeue_all,
    "rq_dashboard.delete_job_view": delete_job_view,
    "rq_dashboard.empty_queue": empty_queue,
    "rq_dashboard.compact_queue": compact_queue,
}
