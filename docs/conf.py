"""Sphinx configuration for sisy's documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` from the repository root.
autodoc imports sisy, so Django is set up with the test project's settings.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()


def _version() -> str:
    """sisy's ``__version__``, read from the source so the docs match the checkout."""
    source = (ROOT / "sisy" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
    if match:
        return match.group(1)
    from importlib.metadata import version

    return version("sisy")


project = "sisy"
author = "sisy contributors"
copyright = "sisy contributors"
release = _version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

# The build machine has no network: nothing is fetched.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"member-order": "bysource"}

nitpicky = False
templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Background jobs for Django, run by Channels workers over Redis",
}


def _drop_signal_class_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # autodata falls back on the object's class docstring, Django's "Base class for
    # all signals"; sisy's signals are described in ref/api.rst instead.
    from django.dispatch import Signal

    if what == "data" and isinstance(obj, Signal):
        lines.clear()


def setup(app: Any) -> None:
    # :setting:`SISY_...` links to the ``.. setting::`` targets in ref/settings.rst.
    app.add_crossref_type("setting", "setting", indextemplate="pair: %s; setting")
    app.connect("autodoc-process-docstring", _drop_signal_class_docstring)
