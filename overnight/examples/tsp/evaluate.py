"""Score tour.txt. PROTECTED: agents must not edit this file.

Prints exactly one line, `tour_length: <float>`: the length of the closed tour that
solve.py wrote to tour.txt (city numbers separated by spaces). Lower is better. Exits
non-zero, with a message on stderr, if tour.txt is missing or is not a tour: every city
of the instance exactly once.
"""

import os
import sys
from typing import NoReturn

from cities import NUM_CITIES, tour_length

TOUR_PATH = "tour.txt"


def fail(message: str) -> NoReturn:
    print(f"evaluate.py: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    if not os.path.exists(TOUR_PATH):
        fail(f"{TOUR_PATH} not found in {os.getcwd()}; did `python solve.py` finish?")
    try:
        with open(TOUR_PATH) as fh:
            tour = [int(word) for word in fh.read().split()]
    except ValueError as error:
        fail(f"{TOUR_PATH} must hold city numbers separated by spaces: {error}")
    if sorted(tour) != list(range(NUM_CITIES)):
        fail(f"{TOUR_PATH} is not a tour: it must visit each of the {NUM_CITIES} cities once")
    print(f"tour_length: {tour_length(tour):.6f}")


if __name__ == "__main__":
    main()
