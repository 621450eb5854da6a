"""Task functions: each kind described and found again; everything else refused by name."""

from __future__ import annotations

import functools
import uuid

import pytest

from sisy import callables
from tests.testapp import tasks
from tests.testapp.models import Counter, Gadget, Shelf

pytestmark = pytest.mark.django_db


def test_plain_function_by_object_and_by_path() -> None:
    expected = {"kind": "function", "path": "tests.testapp.tasks.record_run"}
    assert callables.describe(tasks.record_run) == expected
    assert callables.describe("tests.testapp.tasks.record_run") == expected
    assert callables.resolve(expected) is tasks.record_run


def test_classmethod_and_staticmethod() -> None:
    assert callables.describe(Gadget.nightly) == {
        "kind": "classmethod",
        "path": "tests.testapp.models.Gadget.nightly",
    }
    assert callables.describe("tests.testapp.models.Gadget.cleanup") == {
        "kind": "staticmethod",
        "path": "tests.testapp.models.Gadget.cleanup",
    }
    assert callables.describe(Gadget.cleanup)["kind"] == "staticmethod"


@pytest.mark.parametrize(
    ("make", "method", "json_pk"),
    [
        (lambda: Counter.objects.create(name="c"), "tick", int),
        (lambda: Gadget.objects.create(name="g"), "greet", str),
        (lambda: Shelf.objects.create(code="A-7"), "count", str),
    ],
)
def test_model_instance_methods_for_any_primary_key_type(make, method: str, json_pk: type) -> None:
    instance = make()
    description = callables.describe(getattr(instance, method))
    assert description["kind"] == "method"
    assert description["model"] == instance._meta.label_lower
    assert isinstance(description["model_pk"], json_pk)
    bound = callables.resolve(description)
    assert bound.__self__ == instance
    assert bound.__self__ is not instance  # found again from the database


def test_pk_override_names_the_instance_of_a_dotted_method() -> None:
    gadget = Gadget.objects.create(name="by pk")
    description = callables.describe("tests.testapp.models.Gadget.greet", pk_override=gadget.pk)
    assert description["model_pk"] == str(gadget.pk)
    assert callables.resolve(description).__self__.name == "by pk"


def test_missing_instance_is_a_lookup_error() -> None:
    description = callables.describe("tests.testapp.models.Gadget.greet", pk_override=uuid.uuid4())
    with pytest.raises(LookupError, match="does not exist"):
        callables.resolve(description)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (Gadget, "is a class"),
        (tasks, "is a module"),
        ("tests.testapp.tasks.NotAModel", "not a task function"),
        ("tests.testapp.tasks", "is a module"),
        ("tests.testapp.tasks.NOT_CALLABLE", "not a task function"),
        (Gadget.greet, "is an instance method"),
        ("tests.testapp.models.Gadget.greet", "is an instance method"),
        (tasks.NotAModel().method, "which is not a Django model"),
        ("tests.testapp.tasks.NotAModel.method", "which is not a Django model"),
        (tasks.two_params, "exactly one parameter named 'message'"),
        (tasks.wrongly_named, "exactly one parameter named 'message'"),
        ("tests.testapp.tasks.no_such_function", "no attribute 'no_such_function'"),
        ("no_such_package.tasks.f", "no module 'no_such_package'"),
        ("nodots", "not a dotted path"),
        (lambda message: None, "module level"),
        (functools.partial(tasks.two_params, extra=1), "callable partial object"),
        (Gadget(name="unsaved").greet, "unsaved"),
    ],
)
def test_refused_with_a_value_error_naming_the_problem(target: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        callables.describe(target)  # type: ignore[arg-type]


def test_wrong_signature_of_a_model_method() -> None:
    gadget = Gadget.objects.create(name="x")
    with pytest.raises(ValueError, match="exactly one parameter named 'message'"):
        callables.describe(gadget.wrong)


def test_pk_override_only_for_instance_methods() -> None:
    with pytest.raises(ValueError, match="pk_override"):
        callables.describe("tests.testapp.tasks.record_run", pk_override=1)
    with pytest.raises(ValueError, match="pk_override"):
        callables.describe(tasks.record_run, pk_override=1)


def test_a_function_a_worker_cannot_import_is_refused_by_name() -> None:
    """Defined in a shell (Django's runs code in its command's module) or in __main__."""

    def report(message: dict) -> None:
        pass

    for module in ("django.core.management.commands.shell", "__main__"):
        report.__module__, report.__qualname__ = module, "report"
        with pytest.raises(
            ValueError, match=rf"cannot be imported by a worker as '{module}\.report'"
        ):
            callables.describe(report)


def test_a_builtin_function_is_judged_as_a_function_of_its_module() -> None:
    import math

    # Its __self__ is its module: not "a method of a module", but a function whose
    # signature is not a task function's.
    with pytest.raises(ValueError, match=r"'math.floor' must take exactly one parameter"):
        callables.describe(math.floor)


def test_a_name_bound_to_another_object_is_refused() -> None:
    """A worker imports the name: given another function under it, it would run that one."""

    def report(message: dict) -> None:
        pass

    report.__module__, report.__qualname__ = tasks.__name__, "record_run"
    with pytest.raises(ValueError, match=r"'tests.testapp.tasks.record_run' is another object"):
        callables.describe(report)
