"""Which job functions a worker may run: only those defined in allowed modules.

Anyone who can write to Redis can forge a job hash naming any function, with pickle or JSON alike.
A prefix check on the name is not enough: RQ's ``import_attribute`` resolves
``tasks.settings.os.system`` by importing ``tasks.settings`` and reading its global ``os``. So the
name is resolved here step by step, never through a module other than the allowed one it names,
and then the object that would be called is judged: its own ``__module__`` (a function's, a
class', a bound method's function and instance class) must lie in ``RQPLUS_JOB_MODULES``
(comma-separated module prefixes, default ``tasks``). What is judged is what runs:
:class:`rqplus.job.Job` calls the resolved object, never RQ's resolution of the string.

Usage::

    RQPLUS_JOB_MODULES=tasks,myapp.jobs rq worker -w rqplus.Worker --queue-class rqplus.Queue emails

    resolve("tasks.emails.send_email")        # the function
    resolve("tasks.settings.os.system")       # ForbiddenJobError: ... steps through module os ...
"""

from __future__ import annotations

import importlib
import os
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any, Callable

from rq.exceptions import DeserializationError
from rq.job import Job

from rqplus.exceptions import ForbiddenJobError

#: Environment variable listing the module prefixes whose functions workers may run.
JOB_MODULES_ENV = "RQPLUS_JOB_MODULES"
DEFAULT_JOB_MODULES = ("tasks",)


def allowed_modules() -> tuple[str, ...]:
    """The module prefixes from ``$RQPLUS_JOB_MODULES`` (default: ``tasks``).

    Usage: ``allowed_modules() == ("tasks",)``
    """
    raw = os.environ.get(JOB_MODULES_ENV)
    if raw is None:
        return DEFAULT_JOB_MODULES
    return tuple(prefix.strip() for prefix in raw.split(",") if prefix.strip())


def in_allowed_module(module: object, modules: tuple[str, ...]) -> bool:
    """True when ``module`` (a module's name) is one of ``modules`` or lies inside one of them.

    Usage: ``in_allowed_module("tasks.emails", ("tasks",)) is True``
    """
    return isinstance(module, str) and any(module == prefix or module.startswith(prefix + ".") for prefix in modules)


def is_allowed(dotted: str, modules: tuple[str, ...]) -> bool:
    """True when the name ``dotted`` (``pkg.mod.func``) lies in one of ``modules``: a first look at
    the string only (the producer's check); :func:`resolve` is what a worker trusts.

    Usage: ``is_allowed("tasks.emails.send_email", ("tasks",)) is True``
    """
    module, _, attribute = dotted.rpartition(".")
    return bool(attribute) and in_allowed_module(module, modules)


def resolve(dotted: str, modules: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """The callable ``dotted`` names, if it is defined in an allowed module; else ``ForbiddenJobError``.

    Only modules inside ``modules`` are imported (the longest such prefix of the name that is a
    module); each further step must be a class defined in an allowed module (``mod.Class.method``);
    no step may be a dunder or a module object. The result is judged by :func:`judge`.

    Usage: ``resolve("tasks.demo.work")(0, "x")``
    """
    modules = allowed_modules() if modules is None else modules
    parts = str(dotted).split(".")
    _check_names(dotted, parts, modules)
    tried = None
    for split in range(len(parts) - 1, 0, -1):
        tried = ".".join(parts[:split])
        if not in_allowed_module(tried, modules):
            break  # shorter prefixes lie outside too: nothing outside the allow-list is imported
        module = _import(tried, dotted)
        if module is not None:
            return judge(_walk(module, parts[split:], dotted, modules), dotted, modules)
    if tried is not None and in_allowed_module(tried, modules):
        raise ImportError(f"{dotted}: no module of that name can be imported")
    raise ForbiddenJobError(f"function {dotted} is not in an allowed module ({_listed(modules)}); "
                            f"not imported, not run. Allow it with {JOB_MODULES_ENV}")


def resolve_method(instance: object, name: str, modules: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """``instance.name``, if ``instance``'s class and the method are defined in allowed modules.

    Usage: ``resolve_method(job.instance, job.func_name)``
    """
    modules = allowed_modules() if modules is None else modules
    cls = type(instance)
    dotted = f"{cls.__module__}.{cls.__qualname__}.{name}"
    _check_names(dotted, [name], modules)
    if isinstance(instance, ModuleType) or not in_allowed_module(cls.__module__, modules):
        raise ForbiddenJobError(f"method {dotted}: its instance's class {cls.__module__}.{cls.__qualname__} is not "
                                f"defined in an allowed module ({_listed(modules)}); not run")
    return judge(getattr(instance, name), dotted, modules)


def resolve_job_function(func_name: str, instance: object = None,
                         modules: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """What a job with ``func_name`` (and ``instance``, for a bound method) calls, as RQ would pick
    it (a truthy instance means a method of it), resolved and judged.

    Usage: ``resolve_job_function(job.func_name, job.instance)``
    """
    if instance:
        return resolve_method(instance, func_name, modules)
    return resolve(func_name, modules)


def resolve_class(module: str, qualname: str, modules: tuple[str, ...] | None = None) -> type:
    """The class ``module.qualname``, if it is defined in an allowed module (as a pickle names it).

    Usage: ``resolve_class("tasks.payments", "Charge")``
    """
    found = resolve(f"{module}.{qualname}", modules)
    if not isinstance(found, type):
        raise ForbiddenJobError(f"{module}.{qualname} is not a class")
    return found


def judge(obj: Any, dotted: str, modules: tuple[str, ...]) -> Callable[..., Any]:
    """``obj`` if it is a callable defined in an allowed module, else ``ForbiddenJobError`` naming
    where it is really defined (a re-export from elsewhere is refused).

    Usage: ``judge(tasks.demo.work, "tasks.demo.work", ("tasks",))``
    """
    if isinstance(obj, MethodType):  # a bound method: both its function and what it is bound to
        owner = obj.__self__ if isinstance(obj.__self__, type) else type(obj.__self__)
        judge(owner, dotted, modules)
        return judge(obj.__func__, dotted, modules) and obj
    if isinstance(obj, (FunctionType, BuiltinFunctionType, type)):
        home = getattr(obj, "__module__", None)
    elif callable(obj) and not isinstance(obj, ModuleType):
        home = type(obj).__module__  # an instance with __call__: its class' code runs
    else:
        raise ForbiddenJobError(f"{dotted} is not a function ({type(obj).__name__}); not run")
    if not in_allowed_module(home, modules):
        raise ForbiddenJobError(f"function {dotted} is defined in {home}, not in an allowed module "
                                f"({_listed(modules)}); not run. Allow it with {JOB_MODULES_ENV}")
    return obj


def refusal(job: Job, modules: tuple[str, ...] | None = None) -> str | None:
    """Why ``job`` must not run (the failure text, starting with the error's name), or None when its
    function and callbacks resolve to objects defined in allowed modules (and, for an
    :class:`rqplus.job.Job`, its meta is not a pickle the safe unpickler refused).

    Usage: ``refusal(job)  # -> "ForbiddenJobError: function os.system is not in an allowed module ..."``
    """
    modules = allowed_modules() if modules is None else modules
    try:
        func_name, instance = job.func_name, job.instance
    except DeserializationError as error:
        return f"DeserializationError: the job's data cannot be read with {job.serializer!r}: {error.__cause__ or error}"
    meta_refusal = getattr(job, "meta_refusal", None)
    if meta_refusal is not None and (reason := meta_refusal()) is not None:
        return reason
    try:
        resolve_job_function(func_name, instance, modules)
        for callback in callback_names(job):
            resolve(callback, modules)
    except ForbiddenJobError as error:
        return f"ForbiddenJobError: {error}"
    except ImportError as error:
        return f"ImportError: {error}"
    return None


def callback_names(job: Job) -> list[str]:
    """The dotted names of the job's success, failure and stopped callbacks that are set.

    Usage: ``callback_names(job) == ["tasks.emails.on_failure"]``
    """
    names = (getattr(job, f"_{kind}_callback_name", None) for kind in ("success", "failure", "stopped"))
    return [name for name in names if name]


def _check_names(dotted: str, parts: list[str], modules: tuple[str, ...]) -> None:
    if len(parts) < 1 or not all(part.isidentifier() for part in parts):
        raise ForbiddenJobError(f"{dotted!r} is not a dotted name of a function; not run")
    dunder = next((part for part in parts if part.startswith("__") and part.endswith("__")), None)
    if dunder is not None:
        raise ForbiddenJobError(f"function {dotted} goes through {dunder}, and dunder attributes are never "
                                f"resolved for a job; not run")
    if not modules:
        raise ForbiddenJobError(f"function {dotted}: no module is allowed ({JOB_MODULES_ENV} is empty); not run")


def _import(module_name: str, dotted: str) -> ModuleType | None:
    # None when no module has that name (the caller tries the shorter prefix): an import error
    # raised from inside an existing module is that module's fault and is reported as such
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and in_allowed_module(module_name, (error.name,)):
            return None
        raise ImportError(f"{dotted}: importing {module_name} failed: {error}") from error


def _walk(obj: Any, attributes: list[str], dotted: str, modules: tuple[str, ...]) -> Any:
    for position, name in enumerate(attributes):
        if position:  # only an allowed class' attributes are read beyond the module itself
            if not (isinstance(obj, type) and in_allowed_module(obj.__module__, modules)):
                kind = f"module {obj.__name__}" if isinstance(obj, ModuleType) else f"{type(obj).__name__} object"
                raise ForbiddenJobError(f"function {dotted} steps through {kind} ({attributes[position - 1]}), "
                                        f"not a class defined in an allowed module; not run")
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ImportError(f"{dotted}: {name} does not exist (nothing else was imported or run)") from None
    return obj


def _listed(modules: tuple[str, ...]) -> str:
    return ", ".join(modules) or "none"
