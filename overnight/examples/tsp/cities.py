"""The fixed instance of the tsp lab, and what a tour's length is. PROTECTED: agents must
not edit this file.

NUM_CITIES cities in the unit square, gathered in CLUSTERS clusters of different sizes,
drawn once from INSTANCE_SEED: the same instance on every machine. A tour visits every
city exactly once and returns to where it started; its length is the sum of the
straight-line distances along it, closing edge included.
"""

import math
import random

NUM_CITIES = 200
CLUSTERS = 12
INSTANCE_SEED = 31  # fixes the instance: cities and clusters


def _cities() -> list[tuple[float, float]]:
    rng = random.Random(INSTANCE_SEED)
    centres = [(rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)) for _ in range(CLUSTERS)]
    spreads = [rng.uniform(0.02, 0.09) for _ in range(CLUSTERS)]
    cities = []
    for i in range(NUM_CITIES):
        (cx, cy), spread = centres[i % CLUSTERS], spreads[i % CLUSTERS]
        x = min(max(rng.gauss(cx, spread), 0.0), 1.0)
        y = min(max(rng.gauss(cy, spread), 0.0), 1.0)
        cities.append((x, y))
    return cities


CITIES = _cities()


def distance(a: int, b: int) -> float:
    """Straight-line distance between cities a and b."""
    (ax, ay), (bx, by) = CITIES[a], CITIES[b]
    return math.hypot(ax - bx, ay - by)


def tour_length(tour: list[int]) -> float:
    """Length of the closed tour visiting the cities in this order."""
    return sum(distance(tour[i - 1], tour[i]) for i in range(len(tour)))
