"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html`` (extras ``docs`` or ``dev``)."""

from __future__ import annotations

import pydiscover

project = "pydiscover"
author = "the pydiscover developers"
copyright = f"2026, {author}"
release = pydiscover.__version__  # the full version, e.g. "0.1.0"
version = ".".join(release.split(".")[:2])  # the short X.Y
html_title = f"pydiscover {release}"
html_short_title = project
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
html_theme = "alabaster"
