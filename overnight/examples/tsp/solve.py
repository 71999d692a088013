"""Find a short tour of the cities by simulated annealing. EDITABLE: this is the file to improve.

`python solve.py` builds a tour of the instance in cities.py, improves it with 2-opt
moves (reverse a stretch of the tour) under simulated annealing, writes the best tour
it found to tour.txt and prints `solve_seconds: <float>`. evaluate.py scores tour.txt.

The search is random and unseeded on purpose, as a training run's data order and
initialisation often are: the same settings give a somewhat different tour length on
every run, so one run of an idea is not proof of it.
"""

import math
import random
import time

from cities import NUM_CITIES, distance

# ---- settings: one assignment each, at column 0 (overnight rewrites these lines) ----
START = "greedy"  # first tour: "greedy" (always go to the nearest unvisited city) or "random"
TEMPERATURE = 0.0002  # starting temperature: how much longer a move may make the tour and
# still be taken (the chance is exp(-increase / temperature)); this low, only improvements are
COOLING = 0.1  # the temperature at the end, as a fraction of TEMPERATURE (cooled geometrically)
RESTARTS = 16  # independent searches sharing the move budget; the shortest tour wins
NEIGHBOURS = 10  # a move joins a city to one of its this-many nearest cities
MOVES = 100_000  # moves tried in all: the time budget of a run (about 0.3 s)


def first_tour(rng: random.Random, dist: list[list[float]]) -> list[int]:
    if START == "random":
        tour = list(range(NUM_CITIES))
        rng.shuffle(tour)
        return tour
    if START != "greedy":
        raise ValueError(f"unknown START {START!r}; use 'greedy' or 'random'")
    here = rng.randrange(NUM_CITIES)
    tour, left = [here], set(range(NUM_CITIES)) - {here}
    while left:
        here = min(left, key=dist[here].__getitem__)
        tour.append(here)
        left.remove(here)
    return tour


def anneal(tour: list[int], moves: int, rng: random.Random, dist, near) -> tuple[list[int], float]:
    """2-opt simulated annealing from `tour`; the best tour seen and its length."""
    n = len(tour)
    pos = [0] * n
    for i, city in enumerate(tour):
        pos[city] = i
    length = sum(dist[tour[i - 1]][tour[i]] for i in range(n))
    best, best_length = tour[:], length
    temperature = TEMPERATURE
    step = COOLING ** (1.0 / max(1, moves - 1))
    k = len(near[0])
    rnd = rng.random
    for _ in range(moves):
        a = int(rnd() * n)
        b = near[a][int(rnd() * k)]
        i, j = pos[a], pos[b]
        if i > j:
            i, j = j, i
        temperature *= step
        if i == 0 and j == n - 1:
            continue
        # replace edges (p, q) and (r, s) by (p, r) and (q, s): reverse tour[i+1 .. j]
        p, q, r, s = tour[i], tour[i + 1], tour[j], tour[(j + 1) % n]
        delta = dist[p][r] + dist[q][s] - dist[p][q] - dist[r][s]
        if delta > 0 and rnd() >= math.exp(-delta / temperature):
            continue
        if 2 * (j - i) <= n:
            tour[i + 1 : j + 1] = tour[j:i:-1]
            changed = range(i + 1, j + 1)
        else:  # the same tour: reverse the rest of the cycle instead, which is shorter
            rest = (tour[j + 1 :] + tour[: i + 1])[::-1]
            tour[j + 1 :], tour[: i + 1] = rest[: n - j - 1], rest[n - j - 1 :]
            changed = [*range(j + 1, n), *range(i + 1)]
        for m in changed:
            pos[tour[m]] = m
        length += delta
        if length < best_length - 1e-12:
            best, best_length = tour[:], length
    return best, best_length


def main() -> None:
    started = time.time()
    rng = random.Random()  # unseeded: every run differs
    dist = [[distance(a, b) for b in range(NUM_CITIES)] for a in range(NUM_CITIES)]
    near = [sorted(range(NUM_CITIES), key=row.__getitem__)[1 : NEIGHBOURS + 1] for row in dist]
    best, best_length = None, math.inf
    for _ in range(RESTARTS):
        tour, length = anneal(first_tour(rng, dist), MOVES // RESTARTS, rng, dist, near)
        if length < best_length:
            best, best_length = tour, length
    with open("tour.txt", "w") as fh:
        fh.write(" ".join(map(str, best)) + "\n")
    print(f"solve_seconds: {time.time() - started:.3f}")


if __name__ == "__main__":
    main()
