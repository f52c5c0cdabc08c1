"""Test-only crash points: make the process SIGKILL itself at a named step.

The crash tests (tests/faults/test_crash_campaign.py) need to kill a server at
a precise moment of a segment roll or of a stream create, which no signal
sent from outside can hit. They start the process with::

    UNBROKEN_TEST_KILL_AT=<step>:<n>      e.g. roll.sealed:3

and the ``n``-th time (counted from 1, in this process) the engine reaches
``<step>`` it sends itself SIGKILL -- no cleanup, no flush, as a crash would.
The steps (see :data:`STEPS`):

* ``roll.created`` -- the next segment exists under its temporary name
  (``*.seg.tmp``); the active one is not sealed yet;
* ``roll.sealed`` -- the active segment is sealed (index written, file cut
  to its end; nothing to seal when it was empty), the new one still ``.tmp``;
* ``roll.renamed`` -- the new segment has its final name, the directory is
  not synced yet;
* ``roll.synced`` -- the roll is complete, the record that needed it is not
  written yet;
* ``create.log`` -- a new stream's log (initial data included) is written
  and synced in its ``.tmp-<id>`` folder, no meta file yet;
* ``create.meta`` -- the meta file is written too, the folder not renamed;
* ``create.renamed`` -- the folder has its final name, the data directory
  is not synced yet;
* ``create.synced`` -- the stream is durable, the create not yet answered.

The variable is read once, at import. Unset (always, outside these tests),
:func:`maybe_kill` is a function that does nothing. A malformed value or an
unknown step raises ``ValueError`` at import, so a typo cannot silently
disarm a test.
"""
from __future__ import annotations

import os
import signal
import threading

ENV_VAR = "UNBROKEN_TEST_KILL_AT"
STEPS = frozenset({"roll.created", "roll.sealed", "roll.renamed", "roll.synced",
                   "create.log", "create.meta", "create.renamed", "create.synced"})


def parse(spec: str) -> tuple[str, int]:
    """``"roll.sealed:3"`` -> ``("roll.sealed", 3)``; ``":1"`` may be left out.

    :raises ValueError: an unknown step or a count that is not a positive integer
    """
    step, _, count = spec.strip().partition(":")
    n = int(count) if count else 1
    if step not in STEPS or n < 1:
        raise ValueError(f"{ENV_VAR}={spec!r}: want <step>:<n> with n >= 1 and a step "
                         f"among {', '.join(sorted(STEPS))}")
    return step, n


_SPEC = os.environ.get(ENV_VAR, "")

if not _SPEC:
    def maybe_kill(step: str) -> None:
        """No crash point is armed: nothing to do."""
else:
    _TARGET, _NTH = parse(_SPEC)
    _lock = threading.Lock()
    _reached = 0

    def maybe_kill(step: str) -> None:
        """SIGKILL this process if ``step`` is the armed one, reached for the n-th time."""
        global _reached
        if step != _TARGET:
            return
        with _lock:
            _reached += 1
            if _reached != _NTH:
                return
            # one write to stderr (no buffering) so the test can see which
            # step fired; then die as a crash would
            os.write(2, f"unbroken: test hook: SIGKILL at {step} ({_NTH})\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
