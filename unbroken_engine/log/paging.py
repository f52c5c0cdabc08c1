"""How a read pages: what one record's payload costs against a byte budget.

A read returns whole records up to ``max_bytes``, counting each record's
payload plus the ``,`` that joins a non-empty JSON payload to one before it
(:func:`part_size`, the count the C read ``ub_segment_read`` makes), and it
always takes its first part whole, so it makes progress however small its
budget (:func:`fits`). The Python reads that page by a budget --
:class:`~.memory.MemoryLog`, and the stores reading across a fork's ranges
or a shared backend's records -- count with these, so they page alike.

(A log read goes on after an oversized first record as if its budget were
that record's size, as the C read's buffer grows to hold it: MemoryLog does
so too. The stores' reads across ranges measure later parts against the
budget asked for, :func:`fits`.)
"""
from __future__ import annotations


def part_size(part, json: bool, follows: bool) -> int:
    """The bytes ``part`` (a record's payload) adds to a read: its length,
    plus the ``,`` joining it to the part before when both are JSON.

    :param follows: a non-empty part is already in the read
    """
    return len(part) + (1 if json and follows and len(part) else 0)


def fits(need: int, room: int, first: bool) -> bool:
    """Whether a part of ``need`` bytes (:func:`part_size`) joins a read with
    ``room`` bytes left of its budget: the first part always does, later
    ones only within the budget."""
    return first or need <= room
