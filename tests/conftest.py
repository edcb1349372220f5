"""Shared fixtures: backends are parametrised so later backends join by registration."""

import numpy as np
import pytest

from rnnkern import backends

AVAILABLE = backends.available()
#: every backend that is not the oracle itself; each is checked against it
FAST_BACKENDS = [b for b in AVAILABLE if b != "numpy"]


@pytest.fixture(params=AVAILABLE)
def backend(request):
    """Every backend available here, the NumPy oracle included."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
