"""Team mode's server entry: ``make serve`` runs ``streamlit run serve.py``.

The app is ``app.py`` with its pages, served as an ASGI :class:`streamlit.App` behind the session
gate (:mod:`ui.webgate`): the sign-in page and signed HttpOnly session cookies, media and uploads
only for a signed-in session, upload caps per session and per server, ``/_stcore/metrics`` behind
sign-in. The single-user demo (``make run``) runs ``app.py`` directly on 127.0.0.1 instead.
"""

import streamlit as st
from starlette.middleware import Middleware

from ui.webgate import SessionGate, routes

app = st.App("app.py", routes=routes(), middleware=[Middleware(SessionGate)])
