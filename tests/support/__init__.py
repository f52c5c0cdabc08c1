"""Code shared by the test files (importable because pyproject.toml puts
``tests/`` on ``sys.path``: ``from support.stores import ...``).

Test files run with ``--import-mode=importlib`` and cannot import each other;
what several of them need lives here, one module per concern:

* :mod:`support.stores` -- stores for tests (every kind, fresh and cleaned up),
  the fake clock, the "a waiter is parked" poll;
* :mod:`support.contract` -- the helpers of the store contract suite
  (tests/engine/contract/);
* :mod:`support.server` -- ``unbroken serve`` (or any server command) in a
  subprocess, and the HTTP "a live reader is parked" poll;
* :mod:`support.sse` -- the WHATWG event-stream parser;
* :mod:`support.json_oracle` -- the independent strict-JSON oracle (Python's
  parser) that the C JSON code is judged by.

Fixtures stay in the conftest.py files; they call these modules.
"""
