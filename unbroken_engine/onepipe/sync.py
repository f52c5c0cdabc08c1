"""Kept import path: :mod:`unbroken_server.onepipe.sync` (the blocking facade)."""
from unbroken_server.onepipe.sync import *  # noqa: F401,F403 - a re-export
from unbroken_server.onepipe.sync import __all__  # noqa: F401
