"""Hot-path statements with their SQL built once and reused.

Compiling a queryset costs more than running the statement it makes on a
one-row ``INSERT`` or ``UPDATE`` (it was most of the time of a job in
profiles). The few statements that run once or twice per job are written here
from the models' metadata instead: identifiers come from ``_meta`` and are
quoted by the backend, values are always parameters, prepared by each field's
own ``get_db_prep_save()``. They behave like ``bulk_create()`` and
``QuerySet.update()``: no ``pre_save``/``post_save`` signals.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: sisy's writers wait as SQLite makes them
    fcntl = None  # type: ignore[assignment]

from django.conf import settings
from django.db import DatabaseError, connections, router, transaction
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin, Field

from sisy.conf import sisy_settings

logger = logging.getLogger("sisy.sql")
db_logger = logging.getLogger("django.db.backends")

_cache: dict[tuple[Any, ...], str] = {}


@contextlib.contextmanager
def statement_cursor(connection: Any, prepare: bool = True) -> Iterator[Any]:
    """A cursor for sisy's hot-path statements: on PostgreSQL, prepared ones.

    With psycopg 3 and :setting:`SISY_PREPARED_STATEMENTS`, a statement
    whose text and parameter types do not vary (``prepare``: a claim, a
    one-row update or insert) runs with server-side binding and is prepared
    on the connection the first time (psycopg keeps the 100 most recent), so
    the server neither parses nor plans it again: about a third off each
    claim. Django's own cursor is used otherwise: for statements that vary
    (bulk inserts, grouped completions), elsewhere than PostgreSQL, where the
    database's ``OPTIONS`` turn on ``server_side_binding`` (psycopg's
    ``prepare_threshold`` then rules), and where
    ``DISABLE_SERVER_SIDE_CURSORS`` is set, the setting Django asks for behind
    PgBouncer's transaction pooling, where prepared statements do not survive
    a transaction. As with Django's cursor: its errors, its health check, its
    ``execute_wrapper()`` hooks, its refusal inside a broken transaction, and
    statements logged where Django logs queries.
    """
    if not prepare or not _prepares(connection):
        with connection.cursor() as django_cursor:
            yield django_cursor
        return
    import psycopg

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    # Not connection.cursor(): Django makes it a ClientCursor, which binds
    # parameters on the client and cannot prepare.
    try:
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as raw:
            yield _PreparedCursor(connection, raw)
    except DatabaseError as exc:
        # "cached plan must not change result type" (a migration changed a
        # column) or "prepared statement does not exist" (a pooler's other
        # server connection): the prepared statements are unusable on this
        # connection, which is dropped so that the next statement reconnects.
        unusable = getattr(exc.__cause__, "sqlstate", None) in ("0A000", "26000")
        if unusable and not connection.in_atomic_block:
            connection.close()
        raise


#: psycopg's ``prepare_threshold`` while sisy runs a statement where Django
#: left none (client-side binding): prepared only when asked to. It is put
#: back afterwards, so psycopg keeps no count of Django's own queries.
ONLY_WHEN_ASKED = 2**31 - 1


def _prepares(connection: Any) -> bool:
    if connection.vendor != "postgresql":
        return False
    settings_dict = connection.settings_dict
    if settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        return False
    if (settings_dict.get("OPTIONS") or {}).get("server_side_binding"):
        return False  # Django's cursors bind on the server: psycopg's own prepare_threshold rules
    return _psycopg3() and sisy_settings.PREPARED_STATEMENTS


def _psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


class _PreparedCursor:
    """The few cursor methods sisy uses, on a psycopg cursor, statements prepared."""

    __slots__ = ("_connection", "_raw")

    def __init__(self, connection: Any, raw: Any) -> None:
        self._connection, self._raw = connection, raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        connection = self._connection
        connection.validate_no_broken_transaction()
        executor: Callable[..., Any] = self._execute
        for wrapper in reversed(connection.execute_wrappers):
            executor = functools.partial(wrapper, executor)
        context = {"connection": connection, "cursor": self}
        if not connection.queries_logged:
            executor(sql, params, False, context)
            return
        started = time.monotonic()
        try:
            executor(sql, params, False, context)
        finally:
            duration = time.monotonic() - started
            connection.queries_log.append({"sql": sql, "time": f"{duration:.3f}"})
            db_logger.debug("(%.3f) %s; args=%s; alias=%s", duration, sql, params, connection.alias)

    def _execute(self, sql: str, params: Sequence[Any], many: bool, context: Any) -> None:
        raw_connection = self._raw.connection
        if raw_connection.prepare_threshold is not None:
            self._raw.execute(sql, params, prepare=True)
            return
        raw_connection.prepare_threshold = ONLY_WHEN_ASKED
        try:
            self._raw.execute(sql, params, prepare=True)
        finally:
            raw_connection.prepare_threshold = None

    def fetchall(self) -> list[Any]:
        return list(self._raw.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)


class Values:
    """Rows to insert without building model instances: one tuple per row.

    Each tuple holds the values of the fields ``names`` (attribute names, as
    in ``job_id``), in that order; every other field takes its default, as
    ``model(**dict(zip(names, row)))`` would give it. For models whose fields
    only read their value when saved (no ``auto_now``): :func:`insert` raises
    ``ValueError`` otherwise. Constant defaults are prepared once per
    statement plan, not once per row.
    """

    __slots__ = ("model", "names", "rows")

    def __init__(self, model: type[Model], names: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.model, self.names, self.rows = model, tuple(names), rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice) -> Values:
        return Values(self.model, self.names, self.rows[index])


#: What :func:`insert` takes: model instances, or :class:`Values`.
Rows = Sequence[Model] | Values


def insert(model: type[Model], objs: Rows, using: str | None = None) -> None:
    """``INSERT`` ``objs`` (a few statements at most, each within the parameter limit).

    On PostgreSQL, :data:`COPY_FROM_ROWS` rows or more go in with one ``COPY``
    instead. An automatic primary key is left to the database and not read back.
    """
    if not len(objs):
        return
    using = using or router.db_for_write(model)
    connection = connections[using]
    if connection.vendor == "postgresql" and len(objs) >= COPY_FROM_ROWS and _psycopg3():
        _copy(connection, model, objs)
        _saved(objs, using)
        return
    fields = _insert_fields(model)
    size = len(objs) if len(objs) == 1 else max(1, connection.ops.bulk_batch_size(fields, objs))
    with statement_cursor(connection, prepare=len(objs) == 1) as cursor:
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            sql = _insert_sql(connection, model, len(batch))
            cursor.execute(sql, _params(connection, model, batch))
    _saved(objs, using)


#: From this many rows on, :func:`insert` uses ``COPY ... FROM STDIN`` on
#: PostgreSQL: no statement text to build, send and parse for thousands of
#: parameters (psycopg alone spent most of a bulk submit splitting it).
COPY_FROM_ROWS = 100


def _copy(connection: Any, model: type[Model], objs: Rows) -> None:
    """Insert ``objs`` with one ``COPY``, inside the caller's transaction if any.

    The values are those an ``INSERT`` would send (the same preparation);
    errors are Django's (a taken primary key is an ``IntegrityError``), and
    the statement is logged like any other where queries are.
    """
    quote = connection.ops.quote_name
    fields = _insert_fields(model)
    statement = (
        f"COPY {quote(model._meta.db_table)} "
        f"({', '.join(quote(str(f.column)) for f in fields)}) FROM STDIN"
    )
    params = _params(connection, model, objs)
    width = len(fields)
    with connection.cursor() as cursor:
        logged = getattr(cursor, "debug_sql", None)  # where queries are logged
        with (
            logged(statement, [len(objs)]) if logged else contextlib.nullcontext(),
            connection.wrap_database_errors,
            cursor.cursor.copy(statement) as copy,
        ):
            for start in range(0, len(params), width):
                copy.write_row(params[start : start + width])


def insert_together(groups: Sequence[tuple[type[Model], Rows]], using: str) -> None:
    """Insert a few rows of several models as one unit, parents first.

    On PostgreSQL this is a single statement (the first inserts in a ``WITH``
    clause), atomic by itself, so outside a transaction it costs one round
    trip and one commit; elsewhere the inserts run in one transaction. For
    rows within a statement's parameter limit (a submitted job and its tasks).
    """
    groups = [(model, objs) for model, objs in groups if len(objs)]
    connection = connections[using]
    if connection.vendor != "postgresql" or len(groups) < 2:
        with writer_queue.turn(connection), _write_transaction(connection):
            for model, objs in groups:
                insert(model, objs, using)
        return
    one_each = all(len(objs) == 1 for _, objs in groups)
    statements = [_insert_sql(connection, model, len(objs)) for model, objs in groups]
    sql = (
        "WITH "
        + ", ".join(f"sisy_insert_{n} AS ({s})" for n, s in enumerate(statements[:-1]))
        + " "
        + statements[-1]
    )
    params = [value for model, objs in groups for value in _params(connection, model, objs)]
    if connection.in_atomic_block:
        # Within the caller's transaction: a savepoint, so that a failed insert
        # (a job id already taken) leaves that transaction usable.
        with (
            transaction.atomic(using=using),
            statement_cursor(connection, prepare=one_each) as cursor,
        ):
            cursor.execute(sql, params)
    else:
        with statement_cursor(connection, prepare=one_each) as cursor:
            cursor.execute(sql, params)
    for _, objs in groups:
        _saved(objs, using)


@contextlib.contextmanager
def _write_transaction(connection: Any) -> Iterator[None]:
    """``transaction.atomic()``, lighter for a few inserts into SQLite outside a transaction.

    There the inserts run between ``BEGIN IMMEDIATE`` and ``COMMIT`` sent
    as they are (``ROLLBACK`` on any error), without the bookkeeping of
    ``atomic()`` (savepoint ids, the autocommit switch, on-commit callbacks),
    which cost more than the inserts. Django's connection stays in autocommit
    mode throughout, as it sees it, and errors are still Django's. Anywhere
    else this is ``transaction.atomic()``.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block or not connection.autocommit:
        with transaction.atomic(using=connection.alias):
            yield
        return
    with connection.cursor() as cursor:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield
            cursor.execute("COMMIT")
        except BaseException:
            _roll_back(connection, cursor)
            raise


def _roll_back(connection: Any, cursor: Any) -> None:
    """End the transaction ``_write_transaction`` began, whatever failed (a COMMIT too).

    A COMMIT that fails ("database is locked" while a reader holds the file,
    in SQLite's rollback-journal mode) leaves the transaction open; left so,
    the connection would hold SQLite's lock while Django believes it is in
    autocommit mode. If even the ROLLBACK fails, the connection is closed:
    the next query opens a fresh one. The original error is what the caller sees.
    """
    raw = connection.connection
    if raw is None or not raw.in_transaction:
        return  # SQLite rolled back by itself
    try:
        cursor.execute("ROLLBACK")
    except Exception:
        logger.warning("sisy: could not roll back a failed write; closing the connection")
        connection.close()


_fields: dict[str, list[Field]] = {}


def _insert_fields(model: type[Model]) -> list[Field]:
    fields = _fields.get(model._meta.label)
    if fields is None:
        fields = [f for f in model._meta.concrete_fields if not isinstance(f, AutoFieldMixin)]
        _fields[model._meta.label] = fields
    return fields


def _params(connection: Any, model: type[Model], objs: Rows) -> list[Any]:
    """The parameters of an ``INSERT`` of ``objs``, row after row."""
    if isinstance(objs, Values):
        return _values_params(connection, objs)
    return _insert_params(connection, _insert_fields(model), objs)


def _insert_params(connection: Any, fields: list[Field], objs: Sequence[Model]) -> list[Any]:
    key = (connection.alias, id(fields))
    plan = _insert_plans.get(key)
    if plan is None:
        plan = _insert_plans[key] = [
            (f, _plain_pre_save(f), _preparer(connection, f)) for f in fields
        ]
    params = []
    for obj in objs:
        for field, plain, prepare in plan:
            value = getattr(obj, field.attname) if plain else field.pre_save(obj, True)
            params.append(prepare(value))
    return params


_insert_plans: dict[tuple[str, int], list[tuple[Field, bool, Callable[[Any], Any]]]] = {}

#: For each insert field of a :class:`Values` plan: the row's index of its
#: value, or ``None`` and then a callable default, or the prepared constant.
_ValuesPlan = list[tuple[int | None, Callable[[], Any] | None, Any, Callable[[Any], Any]]]
_values_plans: dict[tuple[str, str, tuple[str, ...]], _ValuesPlan] = {}


def _values_plan(connection: Any, model: type[Model], names: tuple[str, ...]) -> _ValuesPlan:
    key = (connection.alias, model._meta.label, names)
    plan = _values_plans.get(key)
    if plan is not None:
        return plan
    fields = _insert_fields(model)
    known = {f.attname for f in fields}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{model._meta.label} has no field to insert named {unknown[0]!r}")
    plan = []
    for field in fields:
        if not _plain_pre_save(field):
            raise ValueError(
                f"{model._meta.label}.{field.name} sets its value when saved: insert instances"
            )
        prepare = _preparer(connection, field)
        if field.attname in names:
            plan.append((names.index(field.attname), None, None, prepare))
        elif field.has_default() and callable(field.default):
            plan.append((None, field.get_default, None, prepare))
        else:
            plan.append((None, None, prepare(field.get_default()), prepare))
    _values_plans[key] = plan
    return plan


def _values_params(connection: Any, values: Values) -> list[Any]:
    plan = _values_plan(connection, values.model, values.names)
    params: list[Any] = []
    add = params.append
    for row in values.rows:
        for index, default, constant, prepare in plan:
            if index is not None:
                add(prepare(row[index]))
            elif default is not None:
                add(prepare(default()))
            else:
                add(constant)
    return params


def _plain_pre_save(field: Field) -> bool:
    """Whether ``field.pre_save()`` only reads the attribute (no ``auto_now`` and the like)."""
    from django.db.models import DateField, DateTimeField

    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return False
    return type(field).pre_save in (Field.pre_save, DateField.pre_save, DateTimeField.pre_save)


#: Python types a field of each kind stores as they are (after the backend's
#: adaptation, for dates), when no conversion is needed.
_STORED_AS_IS: dict[str, tuple[type, ...]] = {
    "IntegerField": (int,),
    "BigIntegerField": (int,),
    "SmallIntegerField": (int,),
    "PositiveIntegerField": (int,),
    "PositiveSmallIntegerField": (int,),
    "PositiveBigIntegerField": (int,),
    "FloatField": (float,),
    "BooleanField": (bool,),
}

_preparers: dict[tuple[str, int, bool], Callable[[Any], Any]] = {}


def _preparer(connection: Any, field: Field, save: bool = True) -> Callable[[Any], Any]:
    """``field.get_db_prep_save`` (or ``get_db_prep_value``), without its detours.

    For the values sisy's hot path writes (``None``, text, numbers, aware
    datetimes, UUIDs, JSON objects and arrays) the result is what the field's
    own method gives; any other value goes through that method.
    """
    key = (connection.alias, id(field), save)
    found = _preparers.get(key)
    if found is not None:
        return found
    slow = field.get_db_prep_save if save else field.get_db_prep_value
    target = field.target_field if field.many_to_one else field  # type: ignore[attr-defined]
    kind = target.get_internal_type()
    prepare: Callable[[Any], Any]
    if kind in _STORED_AS_IS and not field.many_to_one:
        types = _STORED_AS_IS[kind]

        def prepare(value: Any) -> Any:
            if value is None or type(value) in types:
                return value
            return slow(value, connection)

    elif kind in ("CharField", "TextField") and not field.many_to_one:
        # A str subclass (a TextChoices member) is stored as it is, as Django does.
        def prepare(value: Any) -> Any:
            if value is None or isinstance(value, str):
                return value
            return slow(value, connection)

    elif kind == "JSONField" and hasattr(connection.ops, "adapt_json_value"):
        adapt_json, encoder = connection.ops.adapt_json_value, field.encoder  # type: ignore[attr-defined]

        def prepare(value: Any) -> Any:
            if type(value) is dict or type(value) is list:
                return adapt_json(value, encoder)
            return slow(value, connection)

    elif kind == "DateTimeField":
        adapt = connection.ops.adapt_datetimefield_value
        aware = settings.USE_TZ

        def prepare(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is datetime and (value.tzinfo is not None) is aware:
                return adapt(value)
            return slow(value, connection)

    elif kind == "UUIDField":
        native = connection.features.has_native_uuid_field

        def prepare(value: Any) -> Any:
            if value is None:
                return None
            if type(value) is uuid.UUID:
                return value if native else value.hex
            return slow(value, connection)

    else:

        def prepare(value: Any) -> Any:
            return slow(value, connection)

    _preparers[key] = prepare
    return prepare


def _saved(objs: Rows, using: str) -> None:
    if isinstance(objs, Values):
        return
    for obj in objs:
        obj._state.adding, obj._state.db = False, using


def _insert_sql(connection: Any, model: type[Model], rows: int) -> str:
    key = ("insert", connection.alias, model._meta.label, rows)
    sql = _cache.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        fields = _insert_fields(model)
        columns = ", ".join(quote(str(f.column)) for f in fields)
        row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = (
            f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608 (identifiers from _meta)
            f"VALUES {', '.join([row] * rows)}"
        )
        _cache[key] = sql
    return sql


def update(
    model: type[Model],
    values: Mapping[str, Any],
    where: Mapping[str, Any],
    using: str | None = None,
) -> int:
    """``UPDATE`` ``model`` ``SET values WHERE`` each of ``where`` is equal; the row count.

    Keys are field names. A ``where`` value that is a list or tuple is an
    ``IN`` condition (with that many parameters).
    """
    using = using or router.db_for_write(model)
    connection = connections[using]
    prepared = _prepared_update(connection, model, values, where)
    if prepared is None:
        return 0
    with statement_cursor(connection, prepare=_scalar(where)) as cursor:
        cursor.execute(*prepared)
        return int(cursor.rowcount)


def _scalar(where: Mapping[str, Any]) -> bool:
    """Whether no condition is an ``IN`` list (whose length would vary the statement)."""
    return not any(isinstance(value, (list, tuple)) for value in where.values())


def _prepared_update(
    connection: Any, model: type[Model], values: Mapping[str, Any], where: Mapping[str, Any]
) -> tuple[str, list[Any]] | None:
    """The statement and parameters of :func:`update`; ``None`` if it can match no row."""
    shape = tuple(
        (name, len(value) if isinstance(value, (list, tuple)) else -1)
        for name, value in where.items()
    )
    key = ("update", connection.alias, model._meta.label, tuple(values), shape)
    statement = _updates.get(key)
    if statement is None:
        statement = _updates[key] = _update_statement(connection, model, tuple(values), shape)
    sql, set_preparers, where_preparers = statement
    params = [prepare(value) for prepare, value in zip(set_preparers, values.values(), strict=True)]
    for prepare, value in zip(where_preparers, where.values(), strict=True):
        if isinstance(value, (list, tuple)):
            if not value:
                return None
            params.extend(prepare(v) for v in value)
        else:
            params.append(prepare(value))
    return sql, params


_Preparers = list[Callable[[Any], Any]]
_updates: dict[tuple[Any, ...], tuple[str, _Preparers, _Preparers]] = {}


def _update_statement(
    connection: Any, model: type[Model], names: tuple[str, ...], shape: tuple[tuple[str, int], ...]
) -> tuple[str, _Preparers, _Preparers]:
    meta = model._meta
    quote = connection.ops.quote_name
    set_fields = [_field(meta, name) for name in names]
    where_fields = [_field(meta, name) for name, _ in shape]
    assignments = ", ".join(f"{quote(str(f.column))} = %s" for f in set_fields)
    conditions = []
    for field, (_, count) in zip(where_fields, shape, strict=True):
        column = quote(str(field.column))
        if count < 0:
            conditions.append(f"{column} = %s")
        else:
            conditions.append(f"{column} IN ({', '.join(['%s'] * max(count, 1))})")
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {' AND '.join(conditions)}"  # noqa: S608
    return (
        sql,
        [_preparer(connection, f) for f in set_fields],
        [_preparer(connection, f, save=False) for f in where_fields],
    )


def _field(meta: Any, name: str) -> Field:
    field = meta.get_field(name)
    if not isinstance(field, Field) or not field.concrete:
        raise ValueError(f"{meta.label}.{name} is not a column")
    return field


def column(connection: Any, model: type[Model], name: str) -> str:
    """The quoted column of ``model``'s field ``name``."""
    return str(connection.ops.quote_name(str(_field(model._meta, name).column)))


def columns(connection: Any, model: type[Model], table: str | None = None) -> str:
    """Every column of ``model``, quoted, in field order: what :func:`fetch` reads.

    With ``table``, each column is qualified by it (a table name or an alias).
    """
    quote = connection.ops.quote_name
    prefix = f"{quote(table)}." if table else ""
    return ", ".join(prefix + quote(str(f.column)) for f in model._meta.concrete_fields)


def fetch(model: type[Model], sql: str, params: Sequence[Any], using: str) -> list[Model]:
    """Run ``sql`` and build a ``model`` instance from each row it returns.

    The statement returns :func:`columns` (a ``SELECT``, or a ``RETURNING``
    clause). Like ``Model.objects.raw()``, but with what it resolves per call
    (the column order, the database converters) worked out once per model.
    """
    return [objs[0] for objs in fetch_joined((model,), sql, params, using)]  # type: ignore[misc]


def fetch_joined(
    models: Sequence[type[Model]], sql: str, params: Sequence[Any], using: str
) -> list[tuple[Model | None, ...]]:
    """As :func:`fetch`, for rows made of the :func:`columns` of several models in turn.

    Each row gives one instance per model, or ``None`` where that model's
    primary key is NULL (the missing side of an outer join).
    """
    connection = connections[using]
    with statement_cursor(connection) as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    shapes = []
    offset = 0
    for model in models:
        fields = model._meta.concrete_fields
        pk_at = [f.primary_key for f in fields].index(True)
        converters = _converters(connection, model)
        shapes.append((model, offset, offset + len(fields), pk_at, converters))
        offset += len(fields)
    names: list[str] = []  # every field: from_db() does not look at the names then
    result: list[tuple[Model | None, ...]] = []
    for row in rows:
        objs: list[Model | None] = []
        for model, begin, end, pk_at, converters in shapes:
            values = list(row[begin:end])
            if values[pk_at] is None:
                objs.append(None)
                continue
            for position, (functions, expression) in converters:
                value = values[position]
                for function in functions:
                    value = function(value, expression, connection)
                values[position] = value
            objs.append(model.from_db(using, names, values))
        result.append(tuple(objs))
    return result


_converter_cache: dict[tuple[str, str], list[tuple[int, Any]]] = {}


def _converters(connection: Any, model: type[Model]) -> list[tuple[int, Any]]:
    """Per column position, the database's and the field's converters (as a queryset's)."""
    key = (connection.alias, model._meta.label)
    found = _converter_cache.get(key)
    if found is None:
        from django.db.models.sql import Query

        make = connection.ops.compiler("SQLCompiler")
        compiler = make(Query(model), connection, connection.alias)
        table = model._meta.db_table
        cols = [f.get_col(table) for f in model._meta.concrete_fields]
        found = _converter_cache[key] = list(compiler.get_converters(cols).items())
    return found


class _WriterQueue:
    """Lets sisy's own short SQLite write transactions queue on a file lock.

    SQLite lets one writer in at a time; a writer that finds the database
    locked sleeps and tries again (1 ms, 2 ms, 5 ms, ... up to the timeout).
    Two workers completing hundreds of jobs a second collide all the time
    and spend their time in those sleeps. Taking an exclusive ``flock()`` on
    ``<database>.sisy-lock`` first makes them wait in the kernel instead,
    which wakes the next one the moment the lock is released. SQLite's own
    locking still guarantees correctness; the file lock only orders sisy's
    writers. It is taken only outside a transaction (a connection inside one
    may hold SQLite's lock, and must never wait for this one).
    """

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._pid = 0
        self._threads = threading.Lock()

    @contextlib.contextmanager
    def turn(self, connection: Any) -> Iterator[None]:
        path = self._path(connection)
        if path is None or connection.in_atomic_block:
            yield
            return
        with self._threads:
            handle = self._file(path)
            if handle is None:
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, connection: Any) -> str | None:
        if connection.vendor != "sqlite" or fcntl is None:
            return None
        name = str(connection.settings_dict.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
            return None
        return name + ".sisy-lock"

    def _file(self, path: str) -> Any:
        """The lock file, open for this process; ``None`` where it cannot be created."""
        if self._pid != os.getpid():  # a forked child opens its own
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            try:
                self._files[path] = open(path, "a+b")  # noqa: SIM115 (kept open)
            except OSError as exc:
                logger.warning("sisy: no writer queue for SQLite (%s); writers will sleep", exc)
                self._files[path] = None
        return self._files[path]


writer_queue = _WriterQueue()
