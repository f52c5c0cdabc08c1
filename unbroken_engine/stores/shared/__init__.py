"""Stores several server instances share: Redis or PostgreSQL.

:mod:`.store` holds :class:`SharedStreamStore` (the protocol over a backend
transaction per operation, a record cache and cross-instance notifications)
and the :class:`Backend` interface; :mod:`.redis` and :mod:`.postgres` are
the two backends, each imported only when used (their drivers are extras).
"""
