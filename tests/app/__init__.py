"""Streamlit AppTest tests: one module per page (``pages/``) plus the home page and sign-in."""
