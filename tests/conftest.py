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


#: parameter ids of stores whose drivers (redis-py, psycopg) run on asyncio only
ASYNCIO_ONLY_IDS = ("redis", "postgres")


def pytest_collection_modifyitems(config, items):
    """Leave out the trio variants of tests of asyncio-only stores (rather
    than report hundreds of identical skips)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        ids = callspec.id.split("-") if callspec is not None else []
        if "trio" in ids and any(i in ids for i in ASYNCIO_ONLY_IDS):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
