"""Layout helpers: batch-first, Flux (F, T, B), variable-length lists; round trips."""

import numpy as np
import pytest

from rnnkern import data


def test_batch_first_and_flux_round_trip():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # (B, T, F)
    tm = data.from_batch_first(x)
    assert tm.shape == (3, 2, 4) and tm.flags.c_contiguous and tm[1, 0, 2] == x[0, 1, 2]
    np.testing.assert_array_equal(data.to_batch_first(tm), x)
    flux = np.ascontiguousarray(tm.transpose(2, 0, 1))  # (F, T, B)
    np.testing.assert_array_equal(data.from_flux(flux), tm)
    np.testing.assert_array_equal(data.to_flux(tm), flux)
    assert data.from_batch_first(x, dtype="float64").dtype == np.float64


def test_sequences_round_trip():
    seqs = [np.array([1.0, 2.0, 3.0]), np.array([4.0]), np.array([5.0, 6.0])]
    x, lengths = data.from_sequences(seqs)
    assert x.shape == (3, 3, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(lengths, [3, 1, 2])
    np.testing.assert_array_equal(x[:, 1, 0], [4, 0, 0])
    back = data.to_sequences(x, lengths)
    for a, b in zip(back, seqs, strict=True):
        np.testing.assert_array_equal(a[:, 0], b)
    x2, _ = data.from_sequences([np.ones((2, 3)), np.ones((4, 3))], pad=-1.0)
    assert x2.shape == (4, 2, 3) and x2[3, 0, 0] == -1


def test_bad_layouts():
    with pytest.raises(ValueError, match="x"):
        data.from_batch_first(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"seqs\[1\]"):
        data.from_sequences([np.zeros((2, 3)), np.zeros((2, 2))])
    with pytest.raises(ValueError, match="seqs"):
        data.from_sequences([])
    with pytest.raises(ValueError, match="lengths"):
        data.to_sequences(np.zeros((2, 2, 1)), np.array([3, 1]))
