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

from django.db import connections, router
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
    fields = [f for f in model._meta.concrete_fields if not isinstance(f, AutoFieldMixin)]
    size = max(1, connection.ops.bulk_batch_size(fields, objs))
    with connection.cursor() as cursor:
        for start in range(0, len(objs), size):
            batch = objs[start : start + size]
            params = [
                field.get_db_prep_save(field.pre_save(obj, True), connection)
                for obj in batch
                for field in fields
            ]
            cursor.execute(_insert_sql(connection, model, fields, len(batch)), params)
    for obj in objs:
        obj._state.adding, obj._state.db = False, using


def _insert_sql(connection: Any, model: type[Model], fields: list[Field], rows: int) -> str:
    key = ("insert", connection.alias, model._meta.label, rows)
    sql = _cache.get(key)
    if sql is None:
        quote = connection.ops.quote_name
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
    shape = tuple(
        (name, len(value) if isinstance(value, (list, tuple)) else -1)
        for name, value in where.items()
    )
    key = ("update", using, model._meta.label, tuple(values), shape)
    statement = _updates.get(key)
    if statement is None:
        statement = _updates[key] = _update_statement(connection, model, tuple(values), shape)
    sql, set_fields, where_fields = statement
    pairs = zip(set_fields, values.values(), strict=True)
    params = [field.get_db_prep_save(value, connection) for field, value in pairs]
    for field, value in zip(where_fields, where.values(), strict=True):
        if isinstance(value, (list, tuple)):
            if not value:
                return 0
            params.extend(field.get_db_prep_value(v, connection) for v in value)
        else:
            params.append(field.get_db_prep_value(value, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


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
