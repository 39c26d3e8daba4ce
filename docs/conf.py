"""Sphinx configuration: ``sphinx-build docs docs/_build`` (extra ``docs``)."""

from __future__ import annotations

project = "pydiscover"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
html_theme = "alabaster"
