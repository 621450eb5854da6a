"""The module registry: schemas checked at registration, names unique, no remote $ref."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sisy.modules import Module, ModuleRegistry, compile_schema, quick_check, register, registry


@pytest.fixture
def fresh() -> ModuleRegistry:
    return ModuleRegistry()


def test_register_sets_the_name_and_compiles_the_schema(fresh: ModuleRegistry) -> None:
    class Thumb(Module):
        schema = {"type": "object", "required": ["src"], "properties": {"src": {"type": "string"}}}

        def run(self) -> str:
            return self.data["src"]

    fresh.register("thumbnail", Thumb)
    assert Thumb.name == "thumbnail"
    assert fresh.get("thumbnail") is Thumb
    assert "thumbnail" in fresh
    assert fresh.validate("thumbnail", {"src": "a.png"}) == []
    assert [p.message for p in fresh.validate("thumbnail", {})] == ["'src' is a required property"]


def test_invalid_schema_is_an_error_at_registration(fresh: ModuleRegistry) -> None:
    class Broken(Module):
        schema = {"type": "objekt"}

    with pytest.raises(
        ImproperlyConfigured, match=r"'broken' has an invalid JSON Schema at \$.type"
    ):
        fresh.register("broken", Broken)
    assert "broken" not in fresh


def test_duplicate_name_from_another_class_is_refused(fresh: ModuleRegistry) -> None:
    class One(Module):
        pass

    class Two(Module):
        pass

    fresh.register("same", One)
    fresh.register("same", One)  # re-importing the same class is harmless
    with pytest.raises(ImproperlyConfigured, match="already registered"):
        fresh.register("same", Two)


def test_only_module_subclasses(fresh: ModuleRegistry) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"subclass of sisy\.modules\.Module"):
        fresh.register("x", object)  # type: ignore[arg-type]


def test_register_decorator_uses_the_shared_registry() -> None:
    @register("test-decorated")
    class Decorated(Module):
        pass

    try:
        assert registry.get("test-decorated") is Decorated
    finally:
        registry.unregister("test-decorated")


def test_format_is_checked(fresh: ModuleRegistry) -> None:
    class Mail(Module):
        schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date"}}}

    fresh.register("mail", Mail)
    assert fresh.validate("mail", {"when": "2026-11-23"}) == []
    assert fresh.validate("mail", {"when": "yesterday"})[0].path == "$.when"


@pytest.fixture
def listener() -> Iterator[tuple[str, list[object]]]:
    """A loopback socket that records every connection made to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    connections: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/schema.json", connections
    stop.set()
    thread.join()
    server.close()


def test_remote_ref_opens_no_connection(
    fresh: ModuleRegistry, listener: tuple[str, list[object]]
) -> None:
    url, connections = listener

    class Remote(Module):
        schema = {"type": "object", "properties": {"x": {"$ref": url}}}

    fresh.register("remote", Remote)
    found = fresh.validate("remote", {"x": 1})
    assert len(found) == 1
    assert "cannot be resolved locally" in found[0].message
    assert connections == []


def test_module_lifecycle_defaults() -> None:
    class Plain(Module):
        pass

    module = Plain({"a": 1})
    module.initialize()
    module.cleanup()
    module.progress(0.5)  # no reporter outside a worker: a no-op
    with pytest.raises(NotImplementedError):
        module.run()


# --------------------------------------------------------------------------- the quick check

_kinds = st.sampled_from(["string", "integer", "number", "boolean", "null", "object", "array"])
_short_text = st.text(alphabet="ab", max_size=3)
_numbers = st.one_of(st.integers(-5, 5), st.floats(-5, 5, allow_nan=False))
_types = st.one_of(_kinds, st.lists(_kinds, min_size=1, max_size=3, unique=True))
_keywords = {
    "minimum": _numbers,
    "maximum": _numbers,
    "minLength": st.integers(0, 3),
    "maxLength": st.integers(0, 3),
    "enum": st.lists(_short_text, min_size=1, max_size=3, unique=True),
    "title": st.text(max_size=3),
}
_property_schemas = st.one_of(
    st.just(True),
    st.just({}),
    # One keyword beside the type, each as likely as the others...
    *(st.fixed_dictionaries({"type": _types, word: values}) for word, values in _keywords.items()),
    # ... and any mix of them.
    st.fixed_dictionaries({"type": _types}, optional=_keywords),
)
_names = st.sampled_from(["a", "b", "n"])
_schemas = st.fixed_dictionaries(
    {"properties": st.dictionaries(_names, _property_schemas, max_size=4)},
    optional={
        "type": st.just("object"),
        "required": st.lists(_names, max_size=3, unique=True),
        "additionalProperties": st.booleans(),
        "$schema": st.sampled_from(
            [
                "https://json-schema.org/draft/2020-12/schema",
                "http://json-schema.org/draft-07/schema#",
                "http://json-schema.org/draft-06/schema#",
                "http://json-schema.org/draft-04/schema#",
            ]
        ),
    },
)
_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-10, 10),
        st.floats(-10, 10),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=4),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=2), inner, max_size=2)
    ),
    max_leaves=4,
)


@settings(max_examples=1500, deadline=None)
@given(schema=_schemas, draw=st.data())
def test_the_quick_check_never_passes_what_the_schema_refuses(schema: dict, draw) -> None:
    try:
        validator = compile_schema("quick", schema)
    except ImproperlyConfigured:  # e.g. an empty enum in a draft that forbids it
        assume(False)
    quick = quick_check(validator)
    # Mostly the schema's own names, so that the values are what gets tested.
    names = st.sampled_from(sorted(schema["properties"]) or ["a"])
    values = st.one_of(st.integers(-10, 10), st.floats(-10, 10), _short_text, _values)
    data = draw.draw(st.dictionaries(st.one_of(names, names, _names), values, max_size=3))
    if quick is not None and quick(data):
        assert not list(validator.iter_errors(data)), (schema, data)


@pytest.mark.parametrize(
    ("keywords", "good", "bad"),
    [
        ({"type": "integer", "minimum": 3}, [3, 4], [2, -2, 3.5, "3", True, None]),
        ({"type": "number", "maximum": 3}, [3, 2.5, -1], [3.5, 4, "1", False]),
        ({"type": "string", "minLength": 2}, ["ab", "abc"], ["a", "", 12]),
        ({"type": "string", "maxLength": 2}, ["", "ab"], ["abc", ["a"]]),
        ({"type": "string", "enum": ["x", "y"]}, ["x", "y"], ["z", "", 1]),
        ({"type": ["string", "null"]}, ["", None], [0, [], {}]),
        ({"type": "boolean"}, [True, False], [0, 1, "true", None]),
        ({"type": "array"}, [[], [1]], [(), "[]", {}]),
        ({"type": "object"}, [{}, {"k": 1}], [[], "{}"]),
    ],
)
def test_the_quick_check_at_each_keyword_s_edges(keywords: dict, good: list, bad: list) -> None:
    schema = {"properties": {"v": keywords}, "required": ["v"], "additionalProperties": False}
    validator = compile_schema("edges", schema)
    quick = quick_check(validator)
    assert quick is not None
    for value in good:
        assert quick({"v": value}), value
    for value in bad:
        assert not quick({"v": value}), value
        assert not validator.is_valid({"v": value}), value  # each really is invalid
    assert not quick({}) and not quick({"v": good[0], "other": 1})


def test_the_quick_check_covers_the_usual_schemas_and_no_others() -> None:
    echo = {
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 0}, "note": {"type": "string"}},
        "additionalProperties": False,
    }
    quick = quick_check(compile_schema("echo", echo))
    assert quick is not None
    assert quick({"n": 3}) and quick({"n": 3, "note": "x"})
    assert not quick({"n": -1}) and not quick({"n": 3.0}) and not quick({"n": 1, "x": 2})
    for unusual in (
        {"properties": {"when": {"type": "string", "format": "date"}}},  # formats are checked
        {"properties": {"n": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}},
        {"patternProperties": {"^x": {"type": "string"}}},
        {"properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {}},
    ):
        assert quick_check(compile_schema("unusual", unusual)) is None, unusual


def test_the_registry_reports_what_the_quick_check_is_unsure_of(fresh: ModuleRegistry) -> None:
    class Counted(Module):
        schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    fresh.register("counted", Counted)
    assert fresh.validate("counted", {"n": 1}) == []
    assert [p.path for p in fresh.validate("counted", {"n": "one"})] == ["$.n"]
    assert [p.message for p in fresh.validate("counted", {})] == ["'n' is a required property"]


def test_sisy_modules_naming_a_missing_module_says_so(tmp_path, monkeypatch) -> None:
    """A listed module that is not there names the setting; an error inside one is its own."""
    from django.apps import apps
    from django.test import override_settings

    (tmp_path / "sisy_mods_with_a_bad_import.py").write_text("import sisy_not_a_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = apps.get_app_config("sisy")
    with (
        override_settings(SISY_MODULES=["tests.testapp.no_such_modules"]),
        pytest.raises(ImproperlyConfigured, match=r"SISY_MODULES lists 'tests\.testapp\.no_such"),
    ):
        config.ready()
    with (
        override_settings(SISY_MODULES=["sisy_mods_with_a_bad_import"]),
        pytest.raises(ModuleNotFoundError, match="sisy_not_a_package"),
    ):
        config.ready()
