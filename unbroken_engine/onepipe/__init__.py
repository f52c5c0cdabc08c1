"""The OnePipe builders' first import path, kept working.

The application layer lives above the server, in :mod:`unbroken_server.onepipe`
(it embeds the server and speaks HTTP to remote ones); this module re-exports
its public names, so ``from unbroken_engine.onepipe import Flow`` goes on
working. Nothing here is imported by the engine itself: the names load on
first use (PEP 562), so ``import unbroken_engine`` never pulls in the layer
above it.
"""
from __future__ import annotations

import importlib

_TARGET = "unbroken_server.onepipe"


def __getattr__(name: str):
    return getattr(importlib.import_module(_TARGET), name)


def __dir__():
    return sorted(importlib.import_module(_TARGET).__all__)
