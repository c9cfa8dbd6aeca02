"""Real-browser suite: Chromium (Playwright) against ``streamlit run app.py``."""
