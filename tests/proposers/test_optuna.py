"""The optuna proposer's explore step (after its agent moved to the lab's best)."""

from __future__ import annotations

import random

from overnight.org.config import KnobConfig
from overnight.proposers.optuna import explore, point


def test_an_explore_step_never_goes_back_to_a_point_already_measured() -> None:
    lr = KnobConfig(name="LR", file="train.py", low=1e-4, high=1.0, log=True)
    rng = random.Random(0)
    # from 0.01 a step goes to x1.25 or x0.8; then x0.8 of 0.0125 is 0.01 again (a lattice)
    assert {explore({"LR": 0.01}, [lr], rng)["LR"] for _ in range(50)} == {0.0125, 0.008}
    back = explore({"LR": 0.0125}, [lr], rng, {point({"LR": 0.01}, [lr])})
    assert back is not None and back["LR"] == 0.015625  # x1.25: x0.8 is the measured 0.01
    for _ in range(50):
        assert explore({"LR": 0.0125}, [lr], rng, {point({"LR": 0.01000001}, [lr])}) == {
            "LR": 0.015625
        }
    # every neighbour measured: no step (TPE draws instead)
    both = {point({"LR": 0.01}, [lr]), point({"LR": 0.015625}, [lr])}
    assert explore({"LR": 0.0125}, [lr], rng, both) is None
