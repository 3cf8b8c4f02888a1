"""Every test: the client environment (MIRRORCTL_*) as it was before the test.

A LocalCluster exports its CA and login into MIRRORCTL_TLS_CA/USER/PASSWORD
while it lives (the client library's defaults) and puts them back in
stop_all; a test that makes one and never stops it must not leave the next
test's clients trying TLS against a plaintext server.
"""

from __future__ import annotations

import os

import pytest

_CLIENT_ENV = ("MIRRORCTL_TLS_CA", "MIRRORCTL_USER", "MIRRORCTL_PASSWORD")


@pytest.fixture(autouse=True)
def _restore_client_environment():
    saved = {key: os.environ.get(key) for key in _CLIENT_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
