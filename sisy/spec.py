"""Job specifications: three accepted shapes, one canonical form.

``parse()`` accepts::

    {"job_title": "Encode", "job_id": "<uuid>", "tasks": [{"ffmpeg": {...}}, ...]}
    {"job_name": "Encode", "tasks": [{"module": "ffmpeg", "data": {...}}, ...]}
    {"job_title": "Encode", "job_id": "<uuid>", "ffmpeg": {...}}   # legacy: other keys are tasks

and returns a :class:`JobSpec`, or raises :class:`~sisy.exceptions.JobSpecError`
listing every problem with its task index and JSON path. It is pure: no
database, no settings beyond the module registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sisy.exceptions import JobSpecError
from sisy.modules import Problem, compile_schema, registry

MAX_TITLE_LENGTH = 200
MAX_TASKS = 1000

#: Keys of the envelope; in the legacy shape every other key names a task.
ENVELOPE_KEYS = frozenset(
    {"job_title", "job_name", "job_id", "tasks", "max_attempts", "retries", "time_limit"}
)

#: Longest time limit a job may ask for (a week), in seconds.
MAX_TIME_LIMIT = 7 * 24 * 3600

#: JSON Schema of the envelope (the task list's items are checked in code, per shape).
ENVELOPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "job_title": {"type": "string", "maxLength": MAX_TITLE_LENGTH},
        "job_name": {"type": "string", "maxLength": MAX_TITLE_LENGTH},
        "job_id": {"type": "string"},
        "tasks": {"type": "array", "minItems": 1, "maxItems": MAX_TASKS},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
        "retries": {"type": "integer", "minimum": 0, "maximum": 100},
        "time_limit": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIME_LIMIT},
    },
}

_envelope_validator = compile_schema("job envelope", ENVELOPE_SCHEMA)


@dataclass(frozen=True)
class TaskSpec:
    module: str
    data: dict[str, Any]


@dataclass(frozen=True)
class JobSpec:
    """A validated job specification in canonical form."""

    job_id: uuid.UUID
    title: str
    tasks: tuple[TaskSpec, ...]
    max_attempts: int | None = None
    #: Overrides every task's :attr:`Module.retries <sisy.modules.Module.retries>`.
    retries: int | None = None
    #: Overrides every task's :attr:`Module.time_limit <sisy.modules.Module.time_limit>`.
    time_limit: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The canonical JSON form (the second shape above, with ``job_id``)."""
        spec: dict[str, Any] = {
            "job_id": str(self.job_id),
            "job_title": self.title,
            "tasks": [{"module": t.module, "data": t.data} for t in self.tasks],
        }
        for key in ("max_attempts", "retries", "time_limit"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def loads(text: str | bytes | bytearray) -> Any:
    """Strict JSON: ``NaN`` and ``Infinity`` are refused, as JSON itself refuses them."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JobSpecError([Problem(None, "$", f"not valid JSON: {exc}")]) from exc


def parse(spec: Any) -> JobSpec:
    """Validate ``spec`` (a dict, or a JSON string) and return its canonical form."""
    if isinstance(spec, (str, bytes, bytearray)):
        spec = loads(spec)
    if not isinstance(spec, Mapping):
        raise JobSpecError([Problem(None, "$", "a job specification must be a JSON object")])

    problems = (
        []
        if _envelope_surely_valid(spec)
        else [
            Problem(None, error.json_path, error.message)
            for error in _envelope_validator.iter_errors(dict(spec))
        ]
    )
    title = _title(spec, problems)
    job_id = _job_id(spec, problems)

    if "tasks" in spec:
        unexpected = sorted(str(k) for k in spec if k not in ENVELOPE_KEYS)
        for key in unexpected:
            problems.append(
                Problem(None, f"$.{key}", "unexpected key; with 'tasks', tasks go in the list")
            )
        raw_tasks = spec["tasks"] if isinstance(spec["tasks"], list) else []
        named = [_task_item(i, item, problems) for i, item in enumerate(raw_tasks)]
    else:
        named = [(str(k), v) for k, v in spec.items() if k not in ENVELOPE_KEYS]
        if not named:
            problems.append(Problem(None, "$", "a job needs at least one task"))
        elif len(named) > MAX_TASKS:
            problems.append(Problem(None, "$", f"a job has at most {MAX_TASKS} tasks"))

    title_problem = _text_problem(title)
    if title_problem:
        problems.append(Problem(None, "$.job_title", title_problem))
    tasks = []
    for index, (module, data) in enumerate(named):
        if module is None:
            continue
        problems.extend(registry.validate(module, data, task=index, public_only=True))
        unstorable = _unstorable(data, "$")
        if unstorable is not None:
            problems.append(Problem(index, *unstorable))
        tasks.append(TaskSpec(module, dict(data) if isinstance(data, Mapping) else {}))

    if problems:
        # The envelope first, then task by task (stable: each task's own order kept).
        problems.sort(key=lambda problem: -1 if problem.task is None else problem.task)
        raise JobSpecError(problems)
    if not title:
        title = ", ".join(t.module for t in tasks)[:MAX_TITLE_LENGTH]
    return JobSpec(
        job_id=job_id or uuid.uuid4(),
        title=title,
        tasks=tuple(tasks),
        max_attempts=spec.get("max_attempts"),
        retries=spec.get("retries"),
        time_limit=spec.get("time_limit"),
    )


def _envelope_surely_valid(spec: Mapping[Any, Any]) -> bool:
    """A quick check that ``spec`` passes :data:`ENVELOPE_SCHEMA` (most do).

    ``True`` only when each envelope key holds a value of the plain Python
    type the schema asks for, within its bounds; on anything else (``False``)
    the schema itself is applied, and its messages are reported.
    """
    for key in ENVELOPE_KEYS.intersection(spec):
        value = spec[key]
        if key in ("job_title", "job_name"):
            ok = type(value) is str and len(value) <= MAX_TITLE_LENGTH
        elif key == "job_id":
            ok = type(value) is str
        elif key == "tasks":
            ok = type(value) is list and 1 <= len(value) <= MAX_TASKS
        elif key == "max_attempts":
            ok = type(value) is int and 1 <= value <= 100
        elif key == "retries":
            ok = type(value) is int and 0 <= value <= 100
        else:  # time_limit
            ok = type(value) in (int, float) and 0 < value <= MAX_TIME_LIMIT
        if not ok:
            return False
    return True


def _text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in a database text column, if it cannot."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which databases cannot store in text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def _unstorable(value: Any, path: str) -> tuple[str, str] | None:
    """The JSON path and reason of the first string (or key) that cannot be stored, if any."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, Mapping):
        for key, child in value.items():
            key = str(key)
            child_path = f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"
            problem = _text_problem(key)
            found = (child_path, problem) if problem else _unstorable(child, child_path)
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for position, child in enumerate(value):
            found = _unstorable(child, f"{path}[{position}]")
            if found is not None:
                return found
    return None


def _title(spec: Mapping[str, Any], problems: list[Problem]) -> str:
    title, name = spec.get("job_title"), spec.get("job_name")
    if isinstance(title, str) and isinstance(name, str) and title != name:
        problems.append(
            Problem(None, "$.job_name", "job_title and job_name are two names for one field")
        )
    value = title if isinstance(title, str) else name
    return value.strip() if isinstance(value, str) else ""


def _job_id(spec: Mapping[str, Any], problems: list[Problem]) -> uuid.UUID | None:
    raw = spec.get("job_id")
    if raw is None or not isinstance(raw, str):
        return None  # a wrong type was reported by the envelope schema
    try:
        return uuid.UUID(raw)
    except ValueError:
        problems.append(Problem(None, "$.job_id", f"{raw[:64]!r} is not a UUID"))
        return None


def _task_item(index: int, item: Any, problems: list[Problem]) -> tuple[str | None, Any]:
    """(module, data) of one entry of ``tasks``, in either list shape."""
    if isinstance(item, Mapping) and isinstance(item.get("module"), str):
        extra = sorted(str(k) for k in item if k not in ("module", "data"))
        if extra:
            problems.append(
                Problem(index, "$", f"unexpected key {extra[0]!r} beside 'module' and 'data'")
            )
        return item["module"], item.get("data", {})
    if isinstance(item, Mapping) and len(item) == 1:
        ((module, data),) = item.items()
        return str(module), data
    problems.append(
        Problem(
            index,
            "$",
            'a task is {"<module>": {<data>}} or {"module": "<module>", "data": {<data>}}',
        )
    )
    return None, None
