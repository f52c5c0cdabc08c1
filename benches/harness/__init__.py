"""The harness the ``unbroken bench`` commands share (import name
``unbroken_benches.harness``); each benchmark module keeps its workloads,
options and report, and takes the rest from here:

* :mod:`.options` -- argparse value types, byte sizes, the shared flags
* :mod:`.stats` -- percentiles, latency summaries, medians, ratios
* :mod:`.results` -- :class:`~.results.Run`, one measured round
* :mod:`.report` -- progress lines, formatted figures, tables, JSON
* :mod:`.machine` -- platform, load average, the disk's fsync latency
* :mod:`.process` -- server subprocesses: start, ready line, stop, CPU use
* :mod:`.client` -- the load generator's HTTP/1.1 client
* :mod:`.sse` -- the text/event-stream parser
* :mod:`.workloads` -- closed-loop appends and live-delivery runs over HTTP
* :mod:`.sink` -- the trivial server that measures the generator's ceiling
"""
