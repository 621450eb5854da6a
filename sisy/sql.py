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

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Model
from django.db.models.fields import AutoFieldMixin, Field

_cache: dict[tuple[Any, ...], str] = {}


def insert(model: type[Model], objs: Sequence[Model], using: str | None = None) -> None:
    """``INSERT`` ``objs`` (a few statements at most, each within the parameter limit).

    An automatic primary key is left to the database and not read back.
    """
    if not objs:
        return
    using = using or router.db_for_write(model)
    connection = connections[using]
    fields = _insert_fields(model)
    size = len(objs) if len(objs) == 1 else max(1, connection.ops.bulk_batch_size(fields, objs))
    with connection.cursor() as cursor:
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            sql = _insert_sql(connection, model, len(batch))
            cursor.execute(sql, _insert_params(connection, fields, batch))
    _saved(objs, using)


def insert_together(groups: Sequence[tuple[type[Model], Sequence[Model]]], using: str) -> None:
    """Insert a few rows of several models as one unit, parents first.

    On PostgreSQL this is a single statement (the first inserts in a ``WITH``
    clause), atomic by itself, so outside a transaction it costs one round
    trip and one commit; elsewhere the inserts run in one transaction. For
    rows within a statement's parameter limit (a submitted job and its tasks).
    """
    groups = [(model, objs) for model, objs in groups if objs]
    connection = connections[using]
    if connection.vendor != "postgresql" or len(groups) < 2:
        with transaction.atomic(using=using):
            for model, objs in groups:
                insert(model, objs, using)
        return
    statements = [_insert_sql(connection, model, len(objs)) for model, objs in groups]
    sql = (
        "WITH "
        + ", ".join(f"sisy_insert_{n} AS ({s})" for n, s in enumerate(statements[:-1]))
        + " "
        + statements[-1]
    )
    params = [
        value
        for model, objs in groups
        for value in _insert_params(connection, _insert_fields(model), objs)
    ]
    if connection.in_atomic_block:
        # Within the caller's transaction: a savepoint, so that a failed insert
        # (a job id already taken) leaves that transaction usable.
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(sql, params)
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    for _, objs in groups:
        _saved(objs, using)


_fields: dict[str, list[Field]] = {}


def _insert_fields(model: type[Model]) -> list[Field]:
    fields = _fields.get(model._meta.label)
    if fields is None:
        fields = [f for f in model._meta.concrete_fields if not isinstance(f, AutoFieldMixin)]
        _fields[model._meta.label] = fields
    return fields


def _insert_params(connection: Any, fields: list[Field], objs: Sequence[Model]) -> list[Any]:
    return [
        field.get_db_prep_save(field.pre_save(obj, True), connection)
        for obj in objs
        for field in fields
    ]


def _saved(objs: Sequence[Model], using: str) -> None:
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
    with connection.cursor() as cursor:
        cursor.execute(*prepared)
        return int(cursor.rowcount)


def update_if_parent_updated(
    parent: tuple[type[Model], Mapping[str, Any], Mapping[str, Any]],
    child: tuple[type[Model], Mapping[str, Any], Mapping[str, Any]],
    link: str,
    using: str,
) -> int:
    """Update a parent row, then a child row only if the parent's update matched.

    ``parent`` and ``child`` are ``(model, values, where)`` as for
    :func:`update`; ``link`` is the child's foreign key to the parent. On
    PostgreSQL this is one statement (the parent's ``UPDATE`` in a ``WITH``
    clause), atomic by itself: one round trip and, outside a transaction, one
    commit. Elsewhere the two updates run in one transaction. Returns the
    child's row count: 0 means that neither row changed.
    """
    connection = connections[using]
    first = _prepared_update(connection, *parent)
    second = _prepared_update(connection, *child)
    if first is None or second is None:
        return 0
    if connection.vendor != "postgresql":
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(*first)
            if cursor.rowcount == 0:
                return 0
            cursor.execute(*second)
            return int(cursor.rowcount)
    parent_model, child_model = parent[0], child[0]
    quote = connection.ops.quote_name
    pk = quote(str(parent_model._meta.pk.column))  # type: ignore[union-attr,unused-ignore]
    column = quote(str(_field(child_model._meta, link).column))
    sql = (
        f"WITH sisy_parent AS ({first[0]} RETURNING {pk}) "  # noqa: S608 (identifiers from _meta)
        f"{second[0]} AND {column} IN (SELECT {pk} FROM sisy_parent)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*first[1], *second[1]])
        return int(cursor.rowcount)


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
    sql, set_fields, where_fields = statement
    pairs = zip(set_fields, values.values(), strict=True)
    params = [field.get_db_prep_save(value, connection) for field, value in pairs]
    for field, value in zip(where_fields, where.values(), strict=True):
        if isinstance(value, (list, tuple)):
            if not value:
                return None
            params.extend(field.get_db_prep_value(v, connection) for v in value)
        else:
            params.append(field.get_db_prep_value(value, connection))
    return sql, params


_updates: dict[tuple[Any, ...], tuple[str, list[Field], list[Field]]] = {}


def _update_statement(
    connection: Any, model: type[Model], names: tuple[str, ...], shape: tuple[tuple[str, int], ...]
) -> tuple[str, list[Field], list[Field]]:
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
    return sql, set_fields, where_fields


def _field(meta: Any, name: str) -> Field:
    field = meta.get_field(name)
    if not isinstance(field, Field) or not field.concrete:
        raise ValueError(f"{meta.label}.{name} is not a column")
    return field
