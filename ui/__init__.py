"""Streamlit-only glue shared by the pages: session state, cached loaders, widgets.

Pages stay thin: they read widgets, call :mod:`engine` (directly or through the cached
loaders here) and render. Nothing in ``engine`` imports this package.
"""
