"""Segmentation workbench. Run with ``make run`` (or ``streamlit run app.py``); team mode with ``make serve``.

Registers the navigation (Home first, then ``pages/``) and runs the page the URL names. No heavy work at
import: engine modules load inside the functions that need them.
"""

from ui.navigation import app_navigation

app_navigation().run()
