"""Sphinx configuration of the flowspec documentation.

Build: ``.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The API reference and the kinds catalogue are generated from the code at build time by the local
extension ``_ext/flowspec_docs.py``.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

import flowspec  # noqa: E402

project = "flowspec"
author = "the flowspec authors"
copyright = "the flowspec authors"
release = version = flowspec.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "flowspec_docs"]

exclude_patterns = ["_build"]
root_doc = "index"
language = "en"
html_theme = "alabaster"

# Every member, documented or not, without the values of module data (some are large tables).
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True, "no-value": True}
autodoc_member_order = "bysource"
