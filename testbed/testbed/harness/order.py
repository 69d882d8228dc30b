"""The order a playbook's cases run in: interleaved rounds (A B C A B C ...), shuffled rounds, or sequential.

Why: run back to back, all repeats of a case share one stretch of host load, so a drift of the 2-core host
lands on one case and looks like a difference between cases. Interleaved, repeat k of every case runs in
round k; shuffled permutes each round with a recorded seed, so a periodic disturbance cannot line up with a
case either. Pure: cases in, cases out.
"""

from __future__ import annotations

import random

from testbed.harness.playbook import RUN_ORDERS, Case


def arrange(cases: list[Case], order: str, seed: int | None = None) -> list[Case]:
    """`cases` (the playbook's matrix order, repeats back to back) in the run order `order`.

    interleaved: round k holds repeat k of every case that has one, in matrix order; shuffled: the same rounds,
    each permuted by random.Random(seed); sequential: as given.
    """
    if order not in RUN_ORDERS:
        raise ValueError(f"unknown run order {order!r} (choose from {', '.join(RUN_ORDERS)})")
    if order == "sequential":
        return list(cases)
    if order == "shuffled" and seed is None:
        raise ValueError("a shuffled run order needs a seed")
    rounds: dict[int, list[Case]] = {}
    for case in cases:
        rounds.setdefault(case.repeat, []).append(case)
    rng = random.Random(seed)
    out: list[Case] = []
    for k in sorted(rounds):
        batch = list(rounds[k])
        if order == "shuffled":
            rng.shuffle(batch)
        out.extend(batch)
    return out


def describe(cases: list[Case]) -> list[str]:
    """The run order as case labels, for run.json."""
    return [case.label for case in cases]
