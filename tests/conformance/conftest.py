"""Settings for the conformance tier (tests/conformance/test_conformance.py)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: the official Durable Streams conformance suite (needs node/npm)")
