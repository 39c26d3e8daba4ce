"""Sphinx configuration: ``python -m sphinx -W -b html docs docs/_build/html`` (extras ``docs`` or ``test``)."""

from __future__ import annotations

project = "pydiscover"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
# Show defaults as written (``lambda *a: True``), not as the objects they evaluate to.
autodoc_preserve_defaults = True
html_theme = "alabaster"
