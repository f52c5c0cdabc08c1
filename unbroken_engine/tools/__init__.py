"""Operator tools over a data directory: verify, repair, inspect
(:mod:`.verify`), reading the on-disk format's constants from
``cext/ub_format.h`` through :mod:`unbroken_engine._native`."""
