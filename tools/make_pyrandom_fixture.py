#!/usr/bin/env python3
"""Record draws of CPython's `random` module (Mersenne Twister) for the engine's EvoPress RNG.

EvoPress's search is driven by Python's `random` (seeded with `random.seed(seed)`, as the 2SSP
authors' `set_seed` does); the engine reproduces that stream so a seeded search makes the same
moves. This script writes the draws the engine's `PyRandom` must reproduce:

    python3 tools/make_pyrandom_fixture.py > tests/fixtures/pyrandom.json

Any CPython 3.x gives the same numbers for these calls (3.11 was used).
"""
import json
import platform
import random


def draws(seed):
    rng = random.Random(seed)
    out = {"seed": seed}
    out["getrandbits32"] = [rng.getrandbits(32) for _ in range(5)]
    out["randint_0_29"] = [rng.randint(0, 29) for _ in range(20)]
    out["randint_1_3"] = [rng.randint(1, 3) for _ in range(10)]
    out["sample_30_12"] = rng.sample(list(range(30)), 12)  # pool branch (n <= setsize)
    out["sample_200_12"] = rng.sample(list(range(200)), 12)  # set branch (n > setsize)
    out["sample_4_2"] = rng.sample(list(range(4)), 2)
    out["choice_of_7"] = [rng.choice(list(range(7))) for _ in range(10)]
    out["randint_0_1000000"] = [rng.randint(0, 1000000) for _ in range(5)]
    return out


print(json.dumps({
    "generator": "tools/make_pyrandom_fixture.py",
    "python": platform.python_version(),
    "cases": [draws(0), draws(1), draws(12345678901234567)],
}, indent=1))
