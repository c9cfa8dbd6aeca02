"""Segmentation workbench engine: the pure-Python core behind the app and the CLI.

The engine never imports streamlit and never prints; long work reports progress
through a callback (see :mod:`engine.progress`). Import submodules directly, e.g.
``from engine.datasets import open_dataset``; this package import stays cheap.
"""

__version__ = "0.1.0"
