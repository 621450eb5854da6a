"""Every code sample in docs/ is run here, so the documentation cannot drift from the code.

Each Python block (``.. code-block:: python`` or ``pycon``) says how it runs in
an RST comment right before it, which Sphinx does not show::

    .. sisy-sample: <kind> [argument] [option ...]
       optional hidden set-up code, run first in the page's namespace

The blocks of one page run in order, in one namespace (like a shell session),
against the test database and Redis of tests/settings.py. The user project the
docs talk about (``mysite``, ``myapp``, ``reports``, ``shop``) lives in
tests/docs_samples/; its apps are installed while a page runs.

Kinds:

``settings``
    A fragment of settings.py: executed into a dict; every name must be a
    setting Django, Channels or sisy knows, and is checked (``SISY_*`` values
    validated, sisy's system checks run with the values in place, channel
    layers built, SQLite databases opened, ``LOGGING`` applied).
``file <path>``
    (Part of) the project file tests/docs_samples/<path> (for a non-Python
    block such as a template: its text, as it is): every statement of
    the block must be in that file (a function or class body of ``...``
    stands for anything). The file is then imported; a migration is applied
    and unapplied, an ``asgi.py`` must route sisy's channels, a ``urls.py``
    must include sisy's API. The names the block defines join the namespace.
``module``
    A module file of its own: executed as a fresh module, which must register
    at least one sisy module (unregistered when the page ends).
``code``
    Statements run in the page's namespace.
``pycon``
    A doctest (ELLIPSIS and NORMALIZE_WHITESPACE) in the page's namespace.
``pytest``
    A user's test file: executed, then every ``test_*`` function is called,
    its parameters filled with pytest fixtures of this name.
``urls``
    A urls.py fragment: executed; its ``urlpatterns`` must reach ``sisy:jobs``.
``specs``
    Job specifications, one expression each: they must all parse, to the same job.
``commands``
    A non-Python block (Procfile, unit file, ...): every ``manage.py`` command
    line in it must parse (as in console blocks, which need no comment).
``skip <reason>``
    Not run; the reason says why. Rare, see test_skips_are_rare_and_explained.

Options: ``run-jobs`` runs the queued jobs in-process first, before the
hidden set-up (what a worker would have done meanwhile); ``modules=a,b``
registers permissive stand-in modules of these names for the page;
``requires=<module>`` runs the block only where that Python module exists
(e.g. ``django.tasks``, Django >= 6.0).
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import importlib
import importlib.util
import io
import logging
import logging.config
import re
import shlex
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import modify_settings, override_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROJECT = Path(__file__).resolve().parent / "docs_samples"
#: The apps of the sample project, installed while a page's samples run.
PROJECT_APPS = ["myapp", "reports", "shop"]
#: Models of the sample project whose tables exist while a page's samples run.
PROJECT_MODELS = [("reports", "Report"), ("shop", "Customer")]

PYTHON = {"python", "python3", "py", "py3", "default", ""}
PYCON = {"pycon"}
CONSOLE = {"console", "shell-session"}
SHELL = {"bash", "sh", "shell"}
KINDS = {
    "settings",
    "file",
    "module",
    "code",
    "pycon",
    "pytest",
    "urls",
    "specs",
    "commands",
    "skip",
}
OPTIONS = {"run-jobs", "modules", "requires"}
MAX_SKIPS = 3

DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?:code-block|code|sourcecode)::[ \t]*(?P<lang>\S*)")
MARKER = re.compile(r"^(?P<indent> *)\.\. sisy-sample:(?P<spec>.*)$")


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


@dataclass
class Block:
    """One literal block of a page: a code-block directive or a ``::`` paragraph."""

    page: str  # relative to docs/
    line: int  # 1-based line of the directive
    first: int  # 1-based line of the first line of code
    language: str  # "" for the default; "::" for a literal block
    code: str
    kind: str | None = None
    argument: str = ""
    options: dict[str, str] = field(default_factory=dict)
    setup: str = ""
    setup_line: int = 0
    marker_problem: str = ""

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.language in PYTHON or self.language in PYCON


@dataclass
class Page:
    path: str
    blocks: list[Block]
    problems: list[str]


def _content(lines: list[str], start: int, base: int) -> tuple[int, list[str]]:
    """The indented block after line ``start`` (0-based): (first line index, dedented lines)."""
    index = start + 1
    while index < len(lines) and lines[index].strip().startswith(":") and lines[index].strip():
        index += 1  # directive options
    body: list[str] = []
    first = None
    while index < len(lines):
        line = lines[index]
        if line.strip() and indent_of(line) <= base:
            break
        if line.strip() and first is None:
            first = index
        if first is not None:
            body.append(line)
        index += 1
    while body and not body[-1].strip():
        body.pop()
    return (first if first is not None else start + 1), textwrap.dedent("\n".join(body)).split("\n")


def _marker(block: Block, lines: list[str], directive: int, base: int) -> int | None:
    """Read the ``.. sisy-sample:`` comment right above the directive at ``directive``.

    Returns the comment's line index, if there is one.
    """
    index = directive - 1
    while index >= 0 and not lines[index].strip():
        index -= 1
    setup: list[str] = []
    while index >= 0 and lines[index].strip() and indent_of(lines[index]) > base:
        setup.insert(0, lines[index])
        index -= 1
    match = MARKER.match(lines[index]) if index >= 0 else None
    if match is None or indent_of(lines[index]) != base:
        return None
    words = match["spec"].split()
    if not words:
        block.marker_problem = "an empty sisy-sample comment"
        return index
    block.kind = words[0]
    rest = words[1:]
    if block.kind == "skip":
        block.argument = " ".join(rest)
        rest = []
    elif block.kind == "file" and rest:
        block.argument = rest.pop(0)
    for word in rest:
        name, _, value = word.partition("=")
        block.options[name] = value
    block.setup = textwrap.dedent("\n".join(setup))
    block.setup_line = index + 2
    return index


def parse_page(path: Path, root: Path = DOCS) -> Page:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    page = Page(str(path.relative_to(root)), [], [])
    covered: set[int] = set()
    markers: set[int] = {i for i, line in enumerate(lines) if MARKER.match(line)}
    used_markers: set[int] = set()
    for number, line in enumerate(lines):
        if number in covered:  # inside a block found already
            continue
        match = DIRECTIVE.match(line)
        literal = (
            not match
            and line.rstrip().endswith("::")
            and not line.lstrip().startswith("..")
            and line.strip() != "::"
        ) or line.strip() == "::"
        if not match and not literal:
            continue
        base = indent_of(line)
        first, body = _content(lines, number, base)
        covered.update(range(number, first + len(body)))
        language = match["lang"] if match else "::"
        block = Block(page.path, number + 1, first + 1, language, "\n".join(body))
        if match:
            marker = _marker(block, lines, number, base)
            if marker is not None:
                used_markers.add(marker)
        page.blocks.append(block)
    for index in sorted(markers - used_markers):
        page.problems.append(
            f"docs/{page.path}:{index + 1}: a sisy-sample comment not followed by a code-block"
        )
    for index, line in enumerate(lines):
        if line.lstrip().startswith(">>>") and index not in covered:
            page.problems.append(
                f"docs/{page.path}:{index + 1}: a doctest paragraph; write it as "
                "'.. code-block:: pycon' with a sisy-sample comment"
            )
        if re.match(r"^\s*\.\. (doctest|testcode|testsetup|literalinclude)::", line):
            page.problems.append(
                f"docs/{page.path}:{index + 1}: use '.. code-block::' (this directive is not run)"
            )
    return page


def all_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)


def page_ids() -> list[str]:
    return [str(p.relative_to(DOCS)) for p in all_pages()]


# --- Static checks: every block has a way to run ------------------------------------


def marker_problems(block: Block) -> list[str]:
    problems = []
    if block.marker_problem:
        problems.append(f"{block.where}: {block.marker_problem}")
    if block.kind is None:
        if block.is_python:
            problems.append(
                f"{block.where}: a {block.language or 'default (python)'} block without a "
                "'.. sisy-sample: <kind>' comment right before it (see tests/test_docs.py)"
            )
        return problems
    if block.language == "::":
        return problems
    if block.kind not in KINDS:
        problems.append(f"{block.where}: unknown sample kind {block.kind!r}")
    if block.kind == "pycon" and block.language not in PYCON:
        problems.append(f"{block.where}: kind 'pycon' needs a pycon block")
    if block.language in PYCON and block.kind not in ("pycon", "skip"):
        problems.append(f"{block.where}: a pycon block runs as kind 'pycon'")
    if block.kind == "commands" and block.is_python:
        problems.append(f"{block.where}: kind 'commands' is for non-Python blocks")
    if block.kind not in ("commands", "skip", "file") and not block.is_python:
        problems.append(f"{block.where}: kind {block.kind!r} on a {block.language} block")
    if block.kind == "file" and block.is_python != block.argument.endswith(".py"):
        problems.append(f"{block.where}: 'file' needs the path of a sample project file")
    if block.kind == "skip" and len(block.argument.split()) < 3:
        problems.append(f"{block.where}: a skip must say why, in a few words")
    for name in block.options:
        if name not in OPTIONS:
            problems.append(f"{block.where}: unknown sample option {name!r}")
    return problems


def test_every_python_block_says_how_it_runs() -> None:
    problems: list[str] = []
    count = 0
    for path in all_pages():
        page = parse_page(path)
        problems.extend(page.problems)
        for block in page.blocks:
            count += block.is_python
            problems.extend(marker_problems(block))
    assert count > 60, f"only {count} python blocks found: is the parser broken?"
    assert not problems, "\n".join(problems)


def test_skips_are_rare_and_explained() -> None:
    skips = [
        f"{block.where}: {block.argument}"
        for path in all_pages()
        for block in parse_page(path).blocks
        if block.kind == "skip"
    ]
    assert len(skips) <= MAX_SKIPS, "too many skipped samples:\n" + "\n".join(skips)


def test_the_parser_reads_markers_setup_and_options(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        Title
        =====

        .. sisy-sample: code run-jobs modules=a,b
           x = 1

        .. code-block:: python

           y = x + 1

        Text::

           $ python manage.py migrate

        * item

          .. sisy-sample: skip because it cannot run here

          .. code-block:: pycon

             >>> 1
             1
        """
    )
    path = tmp_path / "page.rst"
    path.write_text(text, encoding="utf-8")
    page = parse_page(path, root=tmp_path)
    assert page.problems == []
    first, literal, third = page.blocks
    assert (first.kind, first.options, first.setup.strip(), first.code) == (
        "code",
        {"run-jobs": "", "modules": "a,b"},
        "x = 1",
        "y = x + 1",
    )
    assert first.first == 9 and first.setup_line == 5
    assert literal.language == "::" and literal.code == "$ python manage.py migrate"
    assert (third.kind, third.argument, third.code) == (
        "skip",
        "because it cannot run here",
        ">>> 1\n1",
    )


def test_the_static_check_reports_what_cannot_run(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        .. code-block:: python

           print("no comment")

        .. sisy-sample: nonsense

        .. code-block:: python

           pass

        .. sisy-sample: skip

        .. code-block:: python

           pass

        .. sisy-sample: code

        Text, not a code-block.

        >>> 1 + 1
        2
        """
    )
    path = tmp_path / "page.rst"
    path.write_text(text, encoding="utf-8")
    page = parse_page(path, root=tmp_path)
    problems = page.problems + [p for block in page.blocks for p in marker_problems(block)]
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "a sisy-sample comment not followed by a code-block",
        "a doctest paragraph; write it as '.. code-block:: pycon' with a sisy-sample comment",
        "a python block without a '.. sisy-sample: <kind>' comment right before it "
        "(see tests/test_docs.py)",
        "unknown sample kind 'nonsense'",
        "a skip must say why, in a few words",
    ]


# --- Console blocks: manage.py commands must exist and accept their arguments ---------


def command_lines(block: Block) -> list[str]:
    """The shell command lines of a console, shell or ``commands`` block."""
    raw = block.code.split("\n")
    if block.language in CONSOLE or block.language == "::":
        raw = [line[2:] for line in raw if line.startswith("$ ")]
    elif block.language not in SHELL and block.kind != "commands":
        return []
    joined: list[str] = []
    for line in raw:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    return [line for line in joined if line and not line.startswith("#")]


DJANGO_COMMAND = re.compile(
    r"(?:^|[\s/=:])(?:manage\.py|-m django|django-admin)\s+(?P<rest>[^;&|]*)"
)


def django_commands(line: str) -> list[list[str]]:
    """Each ``manage.py <command> args`` found in ``line``, as an argument list."""
    found = []
    for match in DJANGO_COMMAND.finditer(line):
        try:
            words = shlex.split(match["rest"])
        except ValueError:
            words = match["rest"].split()
        if words:
            found.append(words)
    return found


def check_command(words: list[str]) -> str | None:
    """``None`` if ``manage.py words...`` parses; otherwise what is wrong."""
    from django.core.management import get_commands, load_command_class

    name, args = words[0], words[1:]
    commands = get_commands()
    if name not in commands:
        return f"no management command {name!r}"
    command = load_command_class(commands[name], name)
    parser = command.create_parser("manage.py", name)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return f"'manage.py {' '.join(words)}' does not parse: {stderr.getvalue().strip()}"
    except Exception as exc:  # CommandError from a parser without called_from_command_line
        return f"'manage.py {' '.join(words)}' does not parse: {exc}"
    return None


@pytest.mark.parametrize("page", page_ids())
def test_console_commands_exist(page: str) -> None:
    problems = []
    for block in parse_page(DOCS / page).blocks:
        if block.kind == "skip":
            continue
        lines = command_lines(block)
        found = 0
        for line in lines:
            for words in django_commands(line):
                found += 1
                problem = check_command(words)
                if problem:
                    problems.append(f"{block.where}: {problem}")
        if block.kind == "commands" and not found:
            problems.append(f"{block.where}: a 'commands' block without a manage.py command")
    assert not problems, "\n".join(problems)


def test_command_check_catches_mistakes() -> None:
    assert check_command(["sisy_worker", "sisy.run", "--prefetch", "2"]) is None
    assert check_command(["migrate"]) is None
    assert "no management command" in str(check_command(["sisy_wroker"]))
    assert "does not parse" in str(check_command(["sisy_worker", "--prefetch", "many"]))
    assert django_commands("ExecStart=/srv/venv/bin/python manage.py sisy_worker --prefetch 1") == [
        ["sisy_worker", "--prefetch", "1"]
    ]


# --- Running the samples ------------------------------------------------------------


class SampleFailed(AssertionError):
    pass


@pytest.fixture(scope="module")
def sample_project() -> Iterator[None]:
    """The sample project on sys.path; sisy modules it registers are removed afterwards."""
    from sisy.modules import registry

    before = set(registry)
    sys.path.insert(0, str(PROJECT))
    try:
        yield
    finally:
        sys.path.remove(str(PROJECT))
        for name in set(registry) - before:
            registry.unregister(name)


@contextlib.contextmanager
def project_installed() -> Iterator[None]:
    """The sample project's apps and URLs installed and its tables created, for one page."""
    from django.apps import apps
    from django.db import connection

    from sisy import signals

    saved_receivers = {
        signal: list(signal.receivers)
        for signal in (
            signals.job_queued,
            signals.job_started,
            signals.job_finished,
            signals.task_failed,
        )
    }
    with (
        modify_settings(INSTALLED_APPS={"append": PROJECT_APPS}),
        override_settings(ROOT_URLCONF="mysite.urls"),
    ):
        models = [apps.get_model(label, name) for label, name in PROJECT_MODELS]
        existing = set(connection.introspection.table_names())
        created = [m for m in models if m._meta.db_table not in existing]
        with connection.schema_editor() as editor:
            for model in created:
                editor.create_model(model)
        try:
            yield
        finally:
            with connection.schema_editor() as editor:
                for model in created:
                    editor.delete_model(model)
            for signal, receivers in saved_receivers.items():
                signal.receivers[:] = receivers
                signal.sender_receivers_cache.clear()


def run_queued_jobs() -> int:
    """Run every queued job in this process, as a worker of each channel would."""
    from sisy import runner
    from sisy.models import Job, JobStatus
    from sisy.state import WorkerState

    state = WorkerState(worker_id="docs-samples")
    channels = (
        Job.objects.filter(status=JobStatus.QUEUED)
        .order_by()
        .values_list("channel", flat=True)
        .distinct()
    )
    return sum(runner.handle_wakeup(None, state, channel) for channel in list(channels))


def stand_in_module(name: str) -> None:
    """Register a module ``name`` accepting any object, unless one exists."""
    from sisy.modules import Module, registry

    if name in registry:
        return
    slug = re.sub(r"\W", "_", name)
    stand_in = type(f"StandIn_{slug}", (Module,), {"run": lambda self: None})
    stand_in.__module__ = f"docs_stand_ins.{slug}"
    registry.register(name, stand_in)


def compiled(code: str, first: int, filename: str) -> types.CodeType:
    """``code`` compiled so that tracebacks show the line numbers of the .rst file."""
    return compile("\n" * (first - 1) + code, filename, "exec")


def fresh_module(block: Block) -> types.ModuleType:
    name = "docs_sample_" + re.sub(r"\W", "_", f"{block.page}_{block.line}")
    module = types.ModuleType(name)
    module.__file__ = str(DOCS / block.page)
    sys.modules[name] = module
    exec(compiled(block.code, block.first, str(DOCS / block.page)), module.__dict__)
    return module


# Statement matching for ``file`` blocks.


def _is_ellipsis(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and node.value.value is Ellipsis
    )


def _dump(node: ast.AST | list[Any] | None) -> str:
    if node is None:
        return ""
    if isinstance(node, list):
        return "[" + ", ".join(_dump(item) for item in node) + "]"
    return ast.dump(node)


def statement_in(wanted: ast.stmt, body: list[ast.stmt]) -> bool:
    return any(statement_matches(wanted, candidate) for candidate in body)


def statement_matches(wanted: ast.stmt, actual: ast.stmt) -> bool:
    if isinstance(wanted, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if type(actual) is not type(wanted):
            return False
        assert isinstance(actual, (ast.FunctionDef, ast.AsyncFunctionDef))
        same = (
            actual.name == wanted.name
            and _dump(actual.args) == _dump(wanted.args)
            and _dump(actual.decorator_list) == _dump(wanted.decorator_list)
            and _dump(actual.returns) == _dump(wanted.returns)
        )
        if not same:
            return False
        if len(wanted.body) == 1 and _is_ellipsis(wanted.body[0]):
            return True
        return _dump(actual.body) == _dump(wanted.body)
    if isinstance(wanted, ast.ClassDef):
        if not isinstance(actual, ast.ClassDef):
            return False
        same = (
            actual.name == wanted.name
            and _dump(actual.bases) == _dump(wanted.bases)
            and _dump(actual.keywords) == _dump(wanted.keywords)
            and _dump(actual.decorator_list) == _dump(wanted.decorator_list)
        )
        return same and all(
            statement_in(member, actual.body) for member in wanted.body if not _is_ellipsis(member)
        )
    return _dump(wanted) == _dump(actual)


def missing_statements(excerpt: str, source: str) -> list[str]:
    """Statements of ``excerpt`` that are not in ``source`` (as source text)."""
    wanted = ast.parse(excerpt).body
    actual = ast.parse(source).body
    return [
        ast.get_source_segment(excerpt, node) or ast.dump(node)
        for node in wanted
        if not _is_ellipsis(node) and not statement_in(node, actual)
    ]


def defined_names(code: str) -> list[str]:
    names = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.extend((a.asname or a.name).split(".")[0] for a in node.names)
    return [name for name in names if name != "*"]


def test_file_matching_accepts_excerpts_and_refuses_changes() -> None:
    source = textwrap.dedent(
        """\
        import os

        class Customer(Base):
            email = 1

            def greet(self, message):
                return os.sep

            @staticmethod
            def cleanup(message):
                pass
        """
    )
    excerpt = "class Customer(Base):\n    def greet(self, message): ...\n"
    assert missing_statements(excerpt, source) == []
    assert missing_statements("import os\n...\n", source) == []
    assert missing_statements("def greet(message): ...\n", source) == ["def greet(message): ..."]
    changed = "class Customer(Base):\n    def greet(self, message):\n        return 1\n"
    assert missing_statements(changed, source) == [changed.strip()]
    assert missing_statements("import sys\n", source) == ["import sys"]


# Kinds.


def _check_settings(values: dict[str, Any]) -> list[str]:
    from django.conf import global_settings

    from sisy import conf

    problems = []
    known_sisy = {f"SISY_{name}" for name in dir(conf) if name.isupper()}
    others = {"CHANNEL_LAYERS", "ASGI_APPLICATION", "TASKS"}
    for name in values:
        if not (hasattr(global_settings, name) or name in known_sisy or name in others):
            problems.append(f"{name} is not a setting of Django, Channels or sisy")
    return problems


def _check_installed_apps(apps_list: list[Any]) -> None:
    for app in apps_list:
        if app is Ellipsis:
            continue
        module = app.rsplit(".", 1)[0] if ".apps." in app else app
        assert importlib.util.find_spec(module) is not None, f"INSTALLED_APPS: no app {app!r}"


def _check_databases(databases: dict[str, Any], tmp_path: Path) -> None:
    from django.db.utils import ConnectionHandler

    keys = {
        "ENGINE",
        "NAME",
        "USER",
        "PASSWORD",
        "HOST",
        "PORT",
        "OPTIONS",
        "TEST",
        "CONN_MAX_AGE",
        "CONN_HEALTH_CHECKS",
        "ATOMIC_REQUESTS",
        "AUTOCOMMIT",
        "TIME_ZONE",
        "DISABLE_SERVER_SIDE_CURSORS",
    }
    for alias, database in databases.items():
        unknown = set(database) - keys
        assert not unknown, f"DATABASES[{alias!r}] has unknown keys {sorted(unknown)}"
        engine = database["ENGINE"]
        assert importlib.util.find_spec(engine) is not None, f"no database engine {engine!r}"
        if engine != "django.db.backends.sqlite3":
            continue
        assert Path(database["NAME"]).parent == tmp_path, "SQLite: NAME should use BASE_DIR"
        handler = ConnectionHandler({alias: dict(database)})
        connection = handler[alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                mode = cursor.fetchone()[0]
            if "WAL" in str(database.get("OPTIONS", {}).get("init_command", "")).upper():
                assert mode == "wal", f"SQLite journal mode is {mode!r}, not WAL"
        finally:
            connection.close()


def _check_logging(config: dict[str, Any]) -> None:
    manager = logging.Logger.manager
    loggers = [logging.root] + [
        lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}
    try:
        logging.config.dictConfig(config)
    finally:
        for lg in [logging.root] + [
            lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]:
            level, handlers, propagate, disabled = saved.get(lg, (logging.NOTSET, [], True, False))
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled


def _check_channel_layers(layers: dict[str, Any]) -> None:
    from django.utils.module_loading import import_string

    for alias, layer in layers.items():
        backend = import_string(layer["BACKEND"])
        instance = backend(**layer.get("CONFIG", {}))
        for index in range(len(getattr(instance, "hosts", []))):
            # The pool (plain or Sentinel) and one connection object: a misspelt
            # key fails here (TypeError); nothing connects yet.
            instance.create_pool(index).make_connection()
        assert instance is not None, alias


def _check_tasks(tasks: dict[str, Any]) -> None:
    if importlib.util.find_spec("django.tasks") is None:  # Django < 6.0
        for config in tasks.values():
            assert config["BACKEND"] == "sisy.backends.ChannelsBackend"
        return
    from django.tasks import task_backends

    with override_settings(TASKS=tasks):
        for alias in tasks:
            assert task_backends[alias] is not None


def _sisy_check_messages(silenced: list[str]) -> list[str]:
    from django.core.checks.registry import registry as check_registry

    messages = []
    for check in check_registry.get_checks():
        if getattr(check, "__module__", "") != "sisy.checks":
            continue
        for message in check(app_configs=None, databases=None):
            if message.id not in silenced and message.is_serious(logging.WARNING):
                messages.append(f"{message.id}: {message.msg}")
    return messages


def run_settings(block: Block, namespace: dict[str, Any], tmp_path: Path) -> None:
    import os

    values: dict[str, Any] = {"BASE_DIR": tmp_path, "os": os, "Path": Path}
    exec(compiled(block.code, block.first, str(DOCS / block.page)), values)
    settings_values = {k: v for k, v in values.items() if k.isupper() and k != "BASE_DIR"}
    assert settings_values, "a settings block that sets nothing"
    problems = _check_settings(settings_values)
    assert not problems, "; ".join(problems)
    special: dict[str, Callable[[Any], None]] = {
        "INSTALLED_APPS": _check_installed_apps,
        "DATABASES": lambda value: _check_databases(value, tmp_path),
        "LOGGING": _check_logging,
        "TASKS": _check_tasks,
    }
    applied = {}
    for name, value in settings_values.items():
        if name in special:
            special[name](value)
        else:
            applied[name] = value
    if "CHANNEL_LAYERS" in applied:
        _check_channel_layers(applied["CHANNEL_LAYERS"])
    from sisy.conf import sisy_settings

    with override_settings(**applied):
        assert sisy_settings.validate() == []
        messages = _sisy_check_messages(list(applied.get("SILENCED_SYSTEM_CHECKS", [])))
    assert not messages, "sisy's checks complain: " + "; ".join(messages)


def run_file(block: Block, namespace: dict[str, Any]) -> None:
    path = PROJECT / block.argument
    assert path.is_file(), f"the sample project has no file {block.argument}"
    if not block.is_python:  # a template, say: the text itself
        assert block.code.strip() in path.read_text(encoding="utf-8"), (
            f"tests/docs_samples/{block.argument} does not contain the sample"
        )
        return
    missing = missing_statements(block.code, path.read_text(encoding="utf-8"))
    assert not missing, f"tests/docs_samples/{block.argument} does not contain:\n" + "\n---\n".join(
        missing
    )
    module = importlib.import_module(block.argument[: -len(".py")].replace("/", "."))
    if "/migrations/" in block.argument:
        _apply_migration(module, block.argument)
    elif block.argument.endswith("asgi.py"):
        _check_routing(module.application)
    elif block.argument.endswith("urls.py"):
        _check_urls(module)
    for name in defined_names(block.code):
        if hasattr(module, name):
            namespace[name] = getattr(module, name)


def _apply_migration(module: types.ModuleType, path: str) -> None:
    from django.apps import apps
    from django.db import connection
    from django.db.migrations.state import ProjectState

    from sisy.models import Task

    parts = path[: -len(".py")].split("/")
    migration = module.Migration(parts[-1], parts[0])
    before = set(Task.objects.values_list("label", flat=True))
    with connection.schema_editor(atomic=migration.atomic) as editor:
        migration.apply(ProjectState.from_apps(apps), editor)
    created = set(Task.objects.values_list("label", flat=True)) - before
    assert created, f"applying {path} created no scheduled Task"
    with connection.schema_editor(atomic=migration.atomic) as editor:
        migration.unapply(ProjectState.from_apps(apps), editor)
    left = set(Task.objects.values_list("label", flat=True))
    assert left == before, f"unapplying {path} left {sorted(left - before)}"
    with connection.schema_editor(atomic=migration.atomic) as editor:
        migration.apply(ProjectState.from_apps(apps), editor)  # leave them, for later samples


def _check_routing(application: Any) -> None:
    from channels.routing import ChannelNameRouter, ProtocolTypeRouter

    from sisy.routing import channel_names

    assert isinstance(application, ProtocolTypeRouter)
    router = application.application_mapping["channel"]
    assert isinstance(router, ChannelNameRouter)
    missing = set(channel_names()) - set(router.application_mapping)
    assert not missing, f"sisy's channels {sorted(missing)} are not routed"


def _check_urls(urlconf: Any) -> None:
    from django.urls import reverse

    assert reverse("sisy:jobs", urlconf=urlconf).endswith("/jobs/")


def run_module(block: Block, namespace: dict[str, Any]) -> None:
    from sisy.modules import registry

    before = set(registry)
    module = fresh_module(block)
    assert set(registry) - before, "a module block that registers no sisy module"
    namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})


def run_pytest(block: Block, request: pytest.FixtureRequest) -> None:
    import inspect

    module = fresh_module(block)
    tests = [
        value
        for name, value in vars(module).items()
        if name.startswith("test_") and callable(value)
    ]
    assert tests, "a pytest block without test_ functions"
    for test in tests:
        parameters = inspect.signature(test).parameters
        test(**{name: request.getfixturevalue(name) for name in parameters})


def run_urls(block: Block) -> None:
    _check_urls(fresh_module(block))


def run_specs(block: Block, namespace: dict[str, Any]) -> None:
    from sisy import spec

    canonical = []
    for node in ast.parse(block.code).body:
        assert isinstance(node, ast.Expr), "a specs block holds expressions only"
        expression = ast.Expression(node.value)
        ast.fix_missing_locations(expression)
        value = eval(compile(expression, str(DOCS / block.page), "eval"), namespace)
        job = spec.parse(value).as_dict()
        job.pop("job_id")
        canonical.append(job)
    assert len(canonical) > 1 and all(job == canonical[0] for job in canonical), canonical


def run_pycon(block: Block, namespace: dict[str, Any]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        block.code, namespace, block.where, str(DOCS / block.page), block.first - 1
    )
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags, verbose=False)
    output: list[str] = []
    result = runner.run(test, out=output.append, clear_globs=False)
    namespace.update(test.globs)  # DocTest ran in a copy of the namespace
    if result.failed:
        raise SampleFailed("".join(output))


def run_block(
    block: Block, namespace: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    requires = block.options.get("requires")
    if requires and importlib.util.find_spec(requires) is None:
        return
    for name in filter(None, block.options.get("modules", "").split(",")):
        stand_in_module(name)
    if "run-jobs" in block.options:
        run_queued_jobs()
    if block.setup:
        exec(compiled(block.setup, block.setup_line, str(DOCS / block.page)), namespace)
    runners: dict[str, Callable[[], None]] = {
        "settings": lambda: run_settings(block, namespace, tmp_path),
        "file": lambda: run_file(block, namespace),
        "module": lambda: run_module(block, namespace),
        "code": lambda: exec(compiled(block.code, block.first, str(DOCS / block.page)), namespace),
        "pycon": lambda: run_pycon(block, namespace),
        "pytest": lambda: run_pytest(block, request),
        "urls": lambda: run_urls(block),
        "specs": lambda: run_specs(block, namespace),
    }
    if block.kind in runners:
        runners[block.kind]()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sample_project")
@pytest.mark.parametrize("page", page_ids())
def test_page_samples_run(page: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from sisy.modules import registry

    parsed = parse_page(DOCS / page)
    blocks = [b for b in parsed.blocks if b.kind not in (None, "skip", "commands")]
    if not blocks:
        return
    namespace: dict[str, Any] = {"__name__": "docs_sample"}
    with project_installed():
        project_modules = set(registry)
        try:
            for block in blocks:
                try:
                    run_block(block, namespace, request, tmp_path)
                except Exception as exc:
                    raise SampleFailed(
                        f"{block.where} ({block.kind}) failed: {type(exc).__name__}: {exc}"
                    ) from exc
        finally:
            for name in set(registry) - project_modules:
                registry.unregister(name)
            for name in [n for n in sys.modules if n.startswith("docs_sample_")]:
                del sys.modules[name]


def test_settings_check_catches_mistakes(tmp_path: Path, django_db_blocker: Any) -> None:
    def check(code: str) -> str:
        block = Block("check.rst", 1, 1, "python", code, kind="settings")
        try:
            with django_db_blocker.unblock():  # SQLite files of its own, not the test database
                run_settings(block, {}, tmp_path)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok"

    host = '{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 10}'
    layer = 'CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", '
    assert check(layer + f'"CONFIG": {{"hosts": [{host}]}}}}}}') == "ok"
    assert "not a setting" in check("SISY_JOB_LEAS = 5")
    assert "SISY_JOB_LEASE must be" in check("SISY_JOB_LEASE = -1")
    assert "socket_timeot" in check(layer + '"CONFIG": {"hosts": [{"socket_timeot": 10}]}}}')
    assert "sisy.W003" in check(layer + '"CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]}}}')
    assert "no app" in check('INSTALLED_APPS = [..., "sisy", "no_such_app"]')
    sqlite = '{"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"'
    assert check(f'DATABASES = {{"default": {sqlite}, "OPTIONS": {{"timeout": 20}}}}}}') == "ok"
    assert "OperationalError" in check(
        f'DATABASES = {{"default": {sqlite}, "OPTIONS": {{"init_command": "PRAGMA nonsense=;"}}}}}}'
    )
