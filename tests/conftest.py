"""Shared fixtures and settings for the whole suite.

Every async test runs on both anyio backends (asyncio and trio). Hypothesis
runs without per-example deadlines: the same tests also run under
AddressSanitizer in .ci/run, where every call is several times slower.
"""
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param
