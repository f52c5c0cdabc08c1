"""The stores: streams with the protocol's semantics, behind one interface.

* :mod:`.interface` -- :class:`StreamStore` and its value types, each method
  documenting the errors it raises;
* :mod:`.base` -- :class:`BaseStreamStore`, the in-process stores' state
  machine over per-stream logs; :mod:`.memory` and :mod:`.file` fill in where
  a stream's log and metadata live;
* :mod:`.shared` -- the same contract on Redis or PostgreSQL, for several
  server instances;
* :mod:`.notify` -- live-reader wake-ups; :mod:`.sync` -- a blocking facade;
* :mod:`.opening` -- ``open_store(url)``, the factory by URL.

Stores use :mod:`unbroken_engine.protocol` for every rule and
:mod:`unbroken_engine.log` for bytes; nothing here knows HTTP.
"""
