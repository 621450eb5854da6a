"""Task functions <-> stored descriptions.

A scheduled Task stores *how to find* its function again, as JSON:

- ``{"kind": "function", "path": "app.utils.report"}``
- ``{"kind": "classmethod", "path": "app.models.Customer.nightly"}``
- ``{"kind": "staticmethod", "path": "app.models.Customer.cleanup"}``
- ``{"kind": "method", "path": "app.models.Customer.greet", "model": "app.customer",
  "model_pk": 42}`` -- an instance method of a Django model instance, found again by
  primary key in the worker; the key may be an integer, a UUID or a string.

Descriptions are made by Python code (``task_with_callable``, migrations), never from
HTTP input: that is what makes importing their path acceptable.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import uuid
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist
from django.db import models

__all__ = ["describe", "resolve"]

KINDS = ("function", "classmethod", "staticmethod", "method")


def describe(target: Callable[..., Any] | str, pk_override: Any = None) -> dict[str, Any]:
    """The stored description of ``target`` (a callable or a dotted path).

    Raises ``ValueError`` naming the problem for anything that is not a task
    function taking exactly one parameter named ``message``.
    """
    if isinstance(target, str):
        description = _describe_path(target, pk_override)
    else:
        if pk_override is not None:
            raise ValueError("pk_override is for a method given by dotted path, not a callable")
        description = _describe_object(target)
    _check_signature(resolve(description, check_instance=False), description["path"])
    return description


def resolve(description: dict[str, Any], *, check_instance: bool = True) -> Callable[..., Any]:
    """The callable a description stands for; a model method is bound to its instance."""
    kind, path = description.get("kind"), description.get("path")
    if kind not in KINDS or not isinstance(path, str):
        raise ValueError(f"not a task function description: {description!r}")
    owner, name = _import_owner(path)
    if kind != "method":
        return getattr(owner, name)
    model = _model(owner, path)
    if not check_instance:
        return getattr(owner, name)
    pk = description.get("model_pk")
    try:
        instance = model._default_manager.get(pk=pk)
    except ObjectDoesNotExist:
        raise LookupError(f"{model._meta.label} with primary key {pk!r} does not exist") from None
    return getattr(instance, name)


def json_pk(pk: Any) -> Any:
    """A primary key as JSON: integers stay integers, anything else becomes its string."""
    if isinstance(pk, bool) or pk is None:
        raise ValueError(f"{pk!r} is not a primary key")
    if isinstance(pk, int):
        return pk
    if isinstance(pk, uuid.UUID):
        return str(pk)
    return str(pk)


def _describe_object(target: Any) -> dict[str, Any]:
    if inspect.isclass(target):
        raise ValueError(f"{target!r} is a class, not a task function")
    if inspect.ismodule(target):
        raise ValueError(f"{target!r} is a module, not a task function")
    if not callable(target):
        raise ValueError(f"{target!r} is not callable")
    owner = getattr(target, "__self__", None)
    if inspect.ismodule(owner):
        owner = None  # a built-in function (print, math.sqrt): its __self__ is its module
    function = getattr(target, "__func__", target)
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not (inspect.isfunction(function) or inspect.ismethod(target) or inspect.isbuiltin(target)):
        raise ValueError(
            f"{target!r} is a callable {type(target).__name__} object, not a function: "
            "a worker can only find a function or method again"
        )
    if module is None or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{target!r} cannot be found again by a worker: use a function defined at "
            "module level (or a method of a class defined at module level)"
        )
    path = f"{module}.{qualname}"
    found = None if module == "__main__" else _found_at(module, qualname)
    if found is None:
        raise ValueError(
            f"{target!r} cannot be imported by a worker as {path!r}: define it in a module "
            "of your project that workers import (not in a shell, a notebook or a script "
            "run as __main__)"
        )
    if found is not function and getattr(found, "__func__", None) is not function:
        raise ValueError(
            f"{path!r} is another object than {target!r} (a decorator without "
            "functools.wraps, or a name bound again?): a worker would run that one; pass "
            "the object the module holds"
        )
    if owner is None:
        if "." in qualname:
            return _describe_path(path, None)  # staticmethod, or an unbound method: the class says
        return {"kind": "function", "path": path}
    if inspect.isclass(owner):
        return {
            "kind": "classmethod",
            "path": f"{owner.__module__}.{owner.__qualname__}.{function.__name__}",
        }
    if not isinstance(owner, models.Model):
        raise ValueError(
            f"{target!r} is a method of a {type(owner).__name__}, which is not a Django model: "
            "a worker could not find that object again"
        )
    if owner.pk is None or owner._state.adding:
        raise ValueError(
            f"{target!r} is a method of an unsaved {type(owner).__name__}: save it first"
        )
    cls = type(owner)
    return {
        "kind": "method",
        "path": f"{cls.__module__}.{cls.__qualname__}.{function.__name__}",
        "model": cls._meta.label_lower,
        "model_pk": json_pk(owner.pk),
    }


def _found_at(module: str, qualname: str) -> Any:
    """What ``module``'s ``qualname`` is (where a worker will look), or ``None``."""
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def _describe_path(path: str, pk_override: Any) -> dict[str, Any]:
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"{path!r} is not a dotted path to a task function")
    owner, name = _import_owner(path)
    if inspect.ismodule(owner):
        target = getattr(owner, name)
        if inspect.isclass(target) or inspect.ismodule(target) or not callable(target):
            raise ValueError(f"{path!r} is a {type(target).__name__}, not a task function")
        if pk_override is not None:
            raise ValueError(
                f"pk_override names a model instance, but {path!r} is a plain function"
            )
        return {"kind": "function", "path": path}
    attribute = inspect.getattr_static(owner, name)
    if isinstance(attribute, classmethod):
        kind = "classmethod"
    elif isinstance(attribute, staticmethod):
        kind = "staticmethod"
    elif inspect.isfunction(attribute):
        model = _model(owner, path)
        if pk_override is None:
            raise ValueError(
                f"{path!r} is an instance method: pass a saved instance's bound method, "
                "or name the instance with pk_override"
            )
        return {
            "kind": "method",
            "path": path,
            "model": model._meta.label_lower,
            "model_pk": json_pk(pk_override),
        }
    else:
        raise ValueError(f"{path!r} is not a function or method")
    if pk_override is not None:
        raise ValueError(f"pk_override names a model instance, but {path!r} is a {kind}")
    return {"kind": kind, "path": path}


def _import_owner(path: str) -> tuple[Any, str]:
    """(the module or class holding the last name of ``path``, that name)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # this prefix is not a module: try a shorter one
            raise ValueError(f"importing {module_name!r} failed: {exc}") from exc
        for attribute in parts[split:-1]:
            try:
                owner = getattr(owner, attribute)
            except AttributeError:
                raise ValueError(
                    f"{path!r}: {module_name!r} has no attribute {attribute!r}"
                ) from None
        if not hasattr(owner, parts[-1]):
            raise ValueError(
                f"{path!r}: {getattr(owner, '__name__', owner)!r} has no attribute {parts[-1]!r}"
            )
        return owner, parts[-1]
    raise ValueError(f"{path!r}: no module {parts[0]!r}")


def _model(owner: Any, path: str) -> type[models.Model]:
    if not (inspect.isclass(owner) and issubclass(owner, models.Model)):
        raise ValueError(
            f"{path!r} is an instance method of {getattr(owner, '__name__', owner)!r}, "
            "which is not a Django model: a worker could not find the instance again"
        )
    return apps.get_model(owner._meta.label)  # the registered class, not a stale import


def _check_signature(function: Callable[..., Any], path: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path!r} has no signature sisy can inspect: {exc}") from exc
    parameters = list(signature.parameters.values())
    if inspect.isfunction(function) and parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]  # unbound instance method checked through its class
    names = [p.name for p in parameters]
    if names != ["message"] or parameters[0].kind in (
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        raise ValueError(
            f"{path!r} must take exactly one parameter named 'message', not ({', '.join(names)})"
        )
