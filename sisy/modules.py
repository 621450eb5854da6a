"""Modules: named, registered units of work with a JSON Schema for their data.

A job is an ordered list of job tasks; each job task names a module and carries
that module's data. The worker drives every module through one lifecycle::

    module = ModuleClass(data, job=job, job_task=job_task)   # __init__
    module.initialize()    # may raise, e.g. a binary the module needs is missing
    module.validate()      # the data against ``schema`` (already checked at submit)
    result = module.run()  # the work; its JSON-serialisable return value is stored
    module.cleanup()       # always, once the module was constructed

Only names registered here can be run: a job row or an HTTP request naming
anything else fails with "unknown module" and nothing is imported.
"""

from __future__ import annotations

import operator
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from django.core.exceptions import ImproperlyConfigured
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

if TYPE_CHECKING:
    from sisy.models import Job, JobTask

__all__ = [
    "Module",
    "ModuleRegistry",
    "Problem",
    "register",
    "registry",
]

ModuleT = TypeVar("ModuleT", bound="type[Module]")


def _refuse_remote(uri: str) -> Any:
    # sisy validates with local schemas only: a "$ref" to anything not registered
    # locally is an error, never a network request.
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


#: Metaschemas plus nothing else; every lookup outside them is refused.
LOCAL_SCHEMAS: Registry[Any] = SPECIFICATIONS.combine(Registry(retrieve=_refuse_remote))  # type: ignore[call-arg]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job specification or a job task's data.

    ``task`` is the index of the job task (``None`` for the envelope), ``path``
    a JSON path inside that task's data (or inside the envelope).
    """

    task: int | None
    path: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "path": self.path, "message": self.message}

    def __str__(self) -> str:
        where = "job" if self.task is None else f"task {self.task}"
        return f"{where}, {self.path}: {self.message}"


class Module:
    """Base class of every module.

    Subclass it, set ``schema``, implement ``run()`` and register the class with
    :func:`register`. ``self.data`` is the job task's data, already validated;
    ``self.job`` and ``self.job_task`` are the records being run (``None`` when
    a module is run outside a worker, e.g. in a unit test).
    """

    #: The registered name; set by :func:`register`.
    name: ClassVar[str] = ""
    #: JSON Schema of the data. The default accepts any object.
    schema: ClassVar[dict[str, Any]] = {"type": "object"}
    #: Whether job specifications may name this module. sisy's own internal
    #: modules (running a scheduled Task) are not public: only sisy creates them.
    public: ClassVar[bool] = True
    #: How many times a failed run is tried again (a job's ``retries`` overrides it).
    #: Invalid data and cancellation are never retried.
    retries: ClassVar[int] = 0
    #: Seconds before the first retry; each next one waits twice as long, up to
    #: ``retry_backoff_max``, each delay drawn between half of it and all of it
    #: when ``retry_jitter`` is set (so failures do not come back in step).
    retry_backoff: ClassVar[float] = 1.0
    retry_backoff_max: ClassVar[float] = 300.0
    retry_jitter: ClassVar[bool] = True
    #: Seconds one run may take; past it the run is stopped and fails with
    #: :class:`~sisy.exceptions.TimeLimitExceeded` (a job's ``time_limit``
    #: overrides it). ``None``: no limit.
    time_limit: ClassVar[float | None] = None

    @classmethod
    def retry_delay(cls, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        delay = min(cls.retry_backoff_max, cls.retry_backoff * 2 ** max(0, retry - 1))
        if cls.retry_jitter:
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - spreading retries, not secrets
        return delay

    def __init__(
        self,
        data: dict[str, Any],
        *,
        job: Job | None = None,
        job_task: JobTask | None = None,
        reporter: Callable[[float, str], None] | None = None,
    ) -> None:
        self.data = data
        self.job = job
        self.job_task = job_task
        self._reporter = reporter
        #: The data this instance's schema check already passed (set by the
        #: worker, which checks every task of a job before the first runs).
        self._checked_data: Any = None

    def initialize(self) -> None:
        """Acquire what ``run()`` needs; raise to fail the job with your message."""

    def validate(self) -> None:
        """Check ``self.data``; raises :class:`sisy.exceptions.JobSpecError`.

        In a worker the data was checked against ``schema`` just before the
        job's first task ran; the check is not repeated then.
        """
        from sisy.exceptions import JobSpecError

        checked = getattr(self, "_checked_data", None)  # a subclass may skip __init__
        if checked is not None and checked is self.data:
            return

        index = self.job_task.position if self.job_task is not None else None
        problems = registry.validate(self.name, self.data, task=index)
        if problems:
            raise JobSpecError(problems)

    def run(self) -> Any:
        """Do the work. The return value, if JSON-serialisable, is stored as the result."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def cleanup(self) -> None:
        """Release what ``initialize()`` or ``run()`` acquired. Always called."""

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled while this module runs (asks the database)."""
        if self.job is None:
            return False
        from sisy.models import Job, JobStatus

        status = Job.objects.filter(pk=self.job.pk).values_list("status", flat=True).first()
        return status == JobStatus.CANCELLED

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress between 0 and 1, with an optional short message.

        Raises :class:`~sisy.exceptions.JobCancelled` if the job was cancelled.
        """
        fraction = min(1.0, max(0.0, float(fraction)))
        if self._reporter is not None:
            self._reporter(fraction, message)


class ModuleRegistry:
    """Module classes by name, each with its compiled schema validator."""

    def __init__(self) -> None:
        self._modules: dict[str, type[Module]] = {}
        self._validators: dict[str, Validator] = {}
        self._quick: dict[str, Callable[[Any], bool] | None] = {}
        self._lock = threading.Lock()

    def register(self, name: str, module_class: type[Module]) -> type[Module]:
        if not isinstance(name, str) or not name.strip():
            raise ImproperlyConfigured(f"sisy module names must be non-empty strings: {name!r}")
        if not (isinstance(module_class, type) and issubclass(module_class, Module)):
            raise ImproperlyConfigured(
                f"sisy module {name!r} must be a subclass of sisy.modules.Module"
            )
        validator = compile_schema(name, module_class.schema)
        _check_policy(name, module_class)
        with self._lock:
            existing = self._modules.get(name)
            if existing is not None and _qualname(existing) != _qualname(module_class):
                raise ImproperlyConfigured(
                    f"sisy module {name!r} is already registered by {_qualname(existing)}; "
                    f"{_qualname(module_class)} cannot take the same name"
                )
            module_class.name = name
            self._modules[name] = module_class
            self._validators[name] = validator
            self._quick[name] = quick_check(validator)
        return module_class

    def unregister(self, name: str) -> None:
        with self._lock:
            self._modules.pop(name, None)
            self._validators.pop(name, None)
            self._quick.pop(name, None)

    def get(self, name: str) -> type[Module]:
        """The module class registered as ``name``; ``KeyError`` when there is none."""
        return self._modules[name]

    def find(self, name: str) -> type[Module] | None:
        """The module class registered as ``name``, or ``None``."""
        return self._modules.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._modules))

    def items(self) -> list[tuple[str, type[Module]]]:
        return sorted(self._modules.items())

    def validate(
        self, name: str, data: Any, *, task: int | None = None, public_only: bool = False
    ) -> list[Problem]:
        """Problems of ``data`` for module ``name``: empty when it may run.

        ``public_only`` refuses sisy's internal modules, as job specifications must.
        """
        module_class = self._modules.get(name)
        if module_class is None or (public_only and not module_class.public):
            return [Problem(task, "$", f"unknown module {name!r}")]
        if not isinstance(data, Mapping):
            return [Problem(task, "$", f"data must be a JSON object, not {_json_type(data)}")]
        quick = self._quick.get(name)
        if quick is not None and quick(data):
            return []
        validator = self._validators[name]
        try:
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
            return [Problem(task, error.json_path, error.message) for error in errors]
        except Unresolvable as exc:
            return [
                Problem(
                    task,
                    "$",
                    f"module {name!r} has a schema reference that cannot be resolved "
                    f"locally ({exc}); sisy never fetches remote schemas",
                )
            ]


def compile_schema(name: str, schema: Any) -> Validator:
    """A validator for ``schema``; ``ImproperlyConfigured`` naming ``name`` when it is invalid."""
    if not isinstance(schema, Mapping):
        raise ImproperlyConfigured(f"sisy module {name!r}: schema must be a dict, not {schema!r}")
    schema = dict(schema)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise ImproperlyConfigured(
            f"sisy module {name!r} has an invalid JSON Schema at {exc.json_path}: {exc.message}"
        ) from exc
    return cls(schema, registry=LOCAL_SCHEMAS, format_checker=cls.FORMAT_CHECKER)


#: Keywords that never make data invalid.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)

#: What each JSON type surely accepts, by exact Python type: a subclass, a
#: float that is a whole number or a tuple is left to the validator.
_SURELY: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
}


def quick_check(validator: Validator) -> Callable[[Any], bool] | None:
    """A fast test that data surely passes ``validator``'s schema, for the common schemas.

    For a schema that is an object with ``properties``, ``required`` and
    ``additionalProperties: false`` (or absent), each property having a
    ``type`` and at most ``minimum``/``maximum``, ``minLength``/``maxLength``
    or an ``enum`` of strings (draft 6 and later), this returns a function
    that is ``True`` only for data the schema accepts. Anything it is not
    sure of (``False``) goes to the validator, which reports the problems; a
    schema with any other keyword gets ``None``: always the validator. A
    module's data is checked on every submit and again by the worker, and
    for such schemas this is several times faster than ``jsonschema``.
    """
    from jsonschema import Draft3Validator, Draft4Validator

    schema = validator.schema
    if not isinstance(schema, dict) or isinstance(validator, (Draft3Validator, Draft4Validator)):
        return None  # older drafts read some of these keywords differently
    keys = set(schema) - _ANNOTATIONS - {"$schema"}
    if not keys <= {"type", "properties", "required", "additionalProperties"}:
        return None
    if schema.get("type", "object") not in ("object", ["object"]):
        return None
    properties, required = schema.get("properties", {}), schema.get("required", [])
    closed = schema.get("additionalProperties", True)
    if (
        not isinstance(properties, dict)
        or not isinstance(required, list)
        or closed not in (True, False)
    ):
        return None
    checks = {key: _quick_value(sub) for key, sub in properties.items()}
    if any(check is None for check in checks.values()):
        return None
    tests: dict[Any, Callable[[Any], bool]] = checks  # type: ignore[assignment]
    needed, open_ = tuple(required), closed is True

    def check(data: Any) -> bool:
        if type(data) is not dict:
            return False
        for key in needed:
            if key not in data:
                return False
        for key, value in data.items():
            test = tests.get(key)
            if test is None:
                if not open_:
                    return False
            elif not test(value):
                return False
        return True

    return check


def _quick_value(schema: Any) -> Callable[[Any], bool] | None:
    """A property's fast test (see :func:`quick_check`), or ``None`` if it has other keywords."""
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict):
        return None
    keys = set(schema) - _ANNOTATIONS
    if not keys or not keys <= {"type", "minimum", "maximum", "minLength", "maxLength", "enum"}:
        return None if keys else (lambda v: True)
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds or not all(k in _SURELY for k in kinds):
        return None
    tests = [_SURELY[kind] for kind in kinds]
    bounds: list[Callable[[Any], bool]] = []
    for word, holds in (("minimum", operator.ge), ("maximum", operator.le)):
        if word in schema:
            if type(schema[word]) not in (int, float):
                return None
            bounds.append(_number_bound(holds, schema[word]))
    for word, holds in (("minLength", operator.ge), ("maxLength", operator.le)):
        if word in schema:
            if type(schema[word]) is not int:
                return None
            bounds.append(_length_bound(holds, schema[word]))
    if "enum" in schema:
        allowed = schema["enum"]
        if not isinstance(allowed, list) or not all(type(item) is str for item in allowed):
            return None
        choices = frozenset(allowed)
        bounds.append(lambda v: type(v) is str and v in choices)

    def check(value: Any) -> bool:
        return any(test(value) for test in tests) and all(bound(value) for bound in bounds)

    return check


def _number_bound(holds: Callable[[Any, Any], bool], bound: float) -> Callable[[Any], bool]:
    # A bound on numbers says nothing of other values (the type test sees to them).
    return lambda v: type(v) not in (int, float) or holds(v, bound)


def _length_bound(holds: Callable[[Any, Any], bool], bound: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is not str or holds(len(v), bound)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _check_policy(name: str, module_class: type[Module]) -> None:
    """Retry and time limit attributes must make sense: say which one does not."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0

    retries = module_class.retries
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ImproperlyConfigured(f"sisy module {name!r}: retries must be an int >= 0")
    for attr in ("retry_backoff", "retry_backoff_max"):
        if not number(getattr(module_class, attr)):
            raise ImproperlyConfigured(f"sisy module {name!r}: {attr} must be a number >= 0")
    limit = module_class.time_limit
    if limit is not None and (not number(limit) or limit == 0):
        raise ImproperlyConfigured(
            f"sisy module {name!r}: time_limit must be a number of seconds > 0, or None"
        )


#: The registry every worker, view and form uses.
registry = ModuleRegistry()


def register(name: str) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: make a :class:`Module` subclass runnable under ``name``.

    Raises ``ImproperlyConfigured`` at import time for an invalid name or
    schema, a class that is not a :class:`Module` subclass, an invalid
    ``retries``, ``retry_backoff``, ``retry_backoff_max`` or ``time_limit``,
    or a name already taken by another class.
    """

    def decorator(module_class: ModuleT) -> ModuleT:
        registry.register(name, module_class)
        return module_class

    return decorator
