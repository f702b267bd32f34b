"""Curve is on in every test, as it is by default: this process's clients and services use
a keys directory made once for the session (services/testing.py ``session_keys``), and each
``Cluster`` makes one of its own."""

from shoal.services.testing import session_keys

session_keys()
