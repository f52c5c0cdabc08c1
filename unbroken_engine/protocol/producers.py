"""Idempotent producers: the validation table of the protocol as one pure function.

No store, lock or clock is involved: a store looks up the producer's state,
calls :func:`validate`, and -- for :data:`ProducerOutcome.ACCEPTED` -- writes
the new state *into the same log record as the data* (its attrs), so that the
state and the data it covers are committed atomically and recovery rebuilds
the state from the log.

The table (``PROTOCOL.md`` section 5.2.1), with ``state = (epoch, last_seq)``:

==========================  ==================================================
epoch < state.epoch         :class:`StaleEpoch` (403, carries the current epoch)
epoch > state.epoch         seq must be 0 (else :class:`InvalidEpochSeq`, 400);
                            accepted, a new epoch begins
no state yet                seq must be 0 (else :class:`ProducerSeqGap`, 409)
seq <= state.last_seq       duplicate (204): already stored, nothing written
seq == state.last_seq + 1   accepted
seq >  state.last_seq + 1   :class:`ProducerSeqGap` (409, expected and received)
==========================  ==================================================
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import InvalidEpochSeq, ProducerSeqGap, StaleEpoch

#: Largest epoch and seq a client may send (2^53 - 1, for JavaScript clients).
MAX_PRODUCER_NUMBER = 2**53 - 1


class ProducerOutcome(enum.Enum):
    """What an append carrying producer headers turned out to be."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class ProducerState:
    """The newest (epoch, seq) a stream has accepted from one producer."""

    epoch: int
    last_seq: int


def validate(state: ProducerState | None, epoch: int, seq: int) -> ProducerOutcome:
    """Decide an append by producer state alone.

    :param state: the producer's current state on this stream, or None
    :return: :data:`ProducerOutcome.ACCEPTED` or :data:`ProducerOutcome.DUPLICATE`
    :raises StaleEpoch: ``epoch`` is older than the state's
    :raises InvalidEpochSeq: a new epoch that does not start at seq 0
    :raises ProducerSeqGap: a seq that skips ahead
    """
    if state is None:
        if seq != 0:
            raise ProducerSeqGap(expected=0, received=seq)
        return ProducerOutcome.ACCEPTED
    if epoch < state.epoch:
        raise StaleEpoch(current_epoch=state.epoch)
    if epoch > state.epoch:
        if seq != 0:
            raise InvalidEpochSeq(epoch, seq)
        return ProducerOutcome.ACCEPTED
    if seq <= state.last_seq:
        return ProducerOutcome.DUPLICATE
    if seq == state.last_seq + 1:
        return ProducerOutcome.ACCEPTED
    raise ProducerSeqGap(expected=state.last_seq + 1, received=seq)
