"""The test suites: ``engine/`` (the engine package), ``app/`` (one AppTest module per page),
``browser/`` (real Chromium against the running app); shared helpers in ``support/``."""
