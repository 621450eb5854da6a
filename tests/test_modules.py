"""The module registry: schemas checked at registration, names unique, no remote $ref."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured

from sisy.modules import Module, ModuleRegistry, register, registry


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
