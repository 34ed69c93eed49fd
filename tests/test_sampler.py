"""The ambient sampler: log-normal marginal, usability, determinism, resume, sharding, coverage check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ambient_fast import buffer_factor, select_sigma_tn
from ambient_fast.data import AmbientSampler, shard


def annotated(n=200, seed=0):
    rng = np.random.default_rng(seed)
    sigma_min = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.2, 3.0, n))  # 10% clean, 90% noisy
    sigma_max = np.where(rng.random(n) < 0.2, rng.uniform(0.01, 0.3, n), 0.0)
    return sigma_min, sigma_max


def test_levels_are_lognormal_and_every_pair_usable():
    sigma_min, sigma_max = annotated()
    sampler = AmbientSampler(sigma_min, sigma_max, batch_size=64, p_mean=-1.2, p_std=1.2, seed=3)
    batches = [sampler.next_global_batch() for _ in range(60)]
    sigma_t = np.concatenate([b.sigma_t for b in batches])
    sigma_tn = np.concatenate([b.sigma_tn for b in batches])
    indices = np.concatenate([b.indices for b in batches])
    assert stats.kstest(np.log(sigma_t), stats.norm(-1.2, 1.2).cdf).pvalue > 0.01
    expected_tn, usable = select_sigma_tn(torch.tensor(sigma_t), torch.tensor(sigma_min[indices]), torch.tensor(sigma_max[indices]))
    assert usable.all()
    np.testing.assert_array_equal(sigma_tn, expected_tn.numpy())
    assert (sigma_tn[sigma_tn > 0] * buffer_factor() < sigma_t[sigma_tn > 0]).all()  # eq. D.2 buffer
    # clean samples are drawn more often than noisy ones: low levels only take clean (or crop) samples
    counts = np.bincount(indices, minlength=len(sigma_min))
    assert counts[sigma_min == 0].mean() > 2 * counts[sigma_min > 1].mean()


def test_deterministic_and_resumable_mid_epoch():
    sigma_min, sigma_max = annotated()
    reference = AmbientSampler(sigma_min, sigma_max, batch_size=16, seed=7)
    expected = [reference.next_global_batch() for _ in range(30)]
    first = AmbientSampler(sigma_min, sigma_max, batch_size=16, seed=7)
    for _ in range(11):
        first.next_global_batch()
    state = first.state_dict()
    assert 0 < state["cursor"] < len(sigma_min)  # mid-epoch
    resumed = AmbientSampler(sigma_min, sigma_max, batch_size=16, seed=7)
    resumed.load_state_dict(state)
    for want in expected[11:]:
        got = resumed.next_global_batch()
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(got.sigma_t, want.sigma_t)
    other_seed = AmbientSampler(sigma_min, sigma_max, batch_size=16, seed=8).next_global_batch()
    assert not np.array_equal(other_seed.indices, expected[0].indices)
    with pytest.raises(ValueError, match="seed"):
        AmbientSampler(sigma_min, sigma_max, batch_size=16, seed=8).load_state_dict(state)


def test_shards_partition_the_global_batch():
    sampler = AmbientSampler(np.zeros(1000), np.zeros(1000), batch_size=12, seed=0)
    batch = sampler.next_global_batch()
    parts = [shard(batch, num_chunks=3, chunk=c) for c in range(3)]
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), batch.indices)
    assert len(set(batch.indices.tolist())) == 12  # no duplicates within an epoch
    with pytest.raises(ValueError, match="divisible"):
        shard(batch, num_chunks=5, chunk=0)


def test_uncovered_levels_are_reported_at_construction():
    # no clean data, nothing annotated below 0.5, crops only up to 0.1: levels [0.1, b * 0.5] have no data
    with pytest.raises(ValueError, match=r"no sample is usable at noise levels in \[0\.1, 0\.577"):
        AmbientSampler(np.full(10, 0.5), np.full(10, 0.1), batch_size=4)
    AmbientSampler(np.full(10, 0.5), np.full(10, 0.6), batch_size=4)  # crops close the gap


def test_sampler_trains_on_clean_data_where_both_regimes_apply():
    # Every sample noisy at 0.2 with crops annotated up to 2.0: for levels in (b * 0.2, 2.0) both regimes apply and
    # the sample is clean data there (sigma_tn = 0, Section 3.2); above 2.0 it is noisy data (sigma_tn = 0.2).
    sampler = AmbientSampler(np.full(50, 0.2), np.full(50, 2.0), batch_size=256, seed=1)
    batch = sampler.next_global_batch()
    both = (batch.sigma_t > buffer_factor() * 0.2) & (batch.sigma_t < 2.0)
    assert both.sum() > 50 and (batch.sigma_t > 2.0).sum() > 0
    assert (batch.sigma_tn[both] == 0).all()
    assert (batch.sigma_tn[batch.sigma_t > 2.0] == 0.2).all()
