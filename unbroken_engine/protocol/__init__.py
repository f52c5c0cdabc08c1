"""The protocol's pure rules: no I/O, no store, no clock of their own.

* :mod:`.offsets` -- the wire form of offsets, strict parsing, ``START``/``NOW``;
* :mod:`.producers` -- idempotent producer validation, one table-sized function;
* :mod:`.media` -- content-type normalisation and the JSON/text decisions;
* :mod:`.framing` -- how a read frames messages, and whether it holds any;
* :mod:`.rules` -- create, append, fork, Stream-Seq and closure rules that
  every store applies, and stream expiry.

Every store (in-process and shared) calls these; none restates them.
"""
