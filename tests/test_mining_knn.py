"""b. kNN backends: agreement, self exclusion, K when the set is small, blocking."""

from __future__ import annotations

import numpy as np
import pytest

from mining.knn import KnnIndex


def unit_vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(bank: np.ndarray, k: int) -> np.ndarray:
    sim = bank @ bank.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_torch_and_faiss_agree():
    bank = unit_vectors(300)
    t_idx, t_sim = KnnIndex(bank, "torch", block=64).search(0, 300, 10)
    f_idx, f_sim = KnnIndex(bank, "faiss", block=64).search(0, 300, 10)
    assert np.array_equal(t_idx, f_idx)
    assert np.allclose(t_sim, f_sim, atol=1e-5)
    assert np.array_equal(t_idx, brute_force(bank, 10))
    assert (np.diff(t_sim, axis=1) <= 1e-7).all()  # most similar first


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_self_excluded_even_with_duplicates(backend):
    bank = unit_vectors(50)
    bank[7] = bank[3]  # an exact duplicate is a neighbour, the image itself is not
    idx, sim = KnnIndex(bank, backend).search(0, 50, 5)
    assert not (idx == np.arange(50)[:, None]).any()
    assert idx[3, 0] == 7 and idx[7, 0] == 3 and sim[3, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_k_honoured_when_fewer_images(backend):
    bank = unit_vectors(4)
    idx, sim = KnnIndex(bank, backend).search(0, 4, 10)
    assert idx.shape == sim.shape == (4, 3)
    for i in range(4):
        assert sorted(idx[i]) == sorted(set(range(4)) - {i})
    idx, _ = KnnIndex(unit_vectors(1), backend).search(0, 1, 10)
    assert idx.shape == (1, 0)


def test_query_ranges_and_blocks_match_one_pass():
    bank = unit_vectors(257)
    full = KnnIndex(bank, "torch", block=4096).search(0, 257, 10)
    part = KnnIndex(bank, "torch", block=16).search(100, 200, 10)
    assert np.array_equal(full[0][100:200], part[0])
    assert np.allclose(full[1][100:200], part[1])


def test_faiss_ivf_index_is_close_to_exact():
    bank = unit_vectors(2000, 16)
    exact, exact_sim = KnnIndex(bank, "torch").search(0, 2000, 10)
    approx, approx_sim = KnnIndex(bank, "faiss", faiss_index="IVF16,Flat",
                                  nprobe=16).search(0, 2000, 10)
    # nprobe = nlist: exhaustive, so the same neighbours (order may differ within 1e-6 ties).
    assert np.array_equal(np.sort(exact, 1), np.sort(approx, 1))
    assert np.allclose(exact_sim, approx_sim, atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match="annoy"):
        KnnIndex(unit_vectors(3), "annoy")


def test_empty_query_range():
    idx, sim = KnnIndex(unit_vectors(20), "torch").search(5, 5, 10)
    assert idx.shape == sim.shape == (0, 10)
