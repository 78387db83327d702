"""A device tier smaller than one batch of disk hits: the hits it cannot keep stay memory maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.models.cache import EmbeddingCache
from labeler.models.devicetier import DeviceTier

ROW = 3 * 8 * 2 + 8 * 4  # fp16 hidden (3, 8) + pooled (8,) as float32 on the tier


@pytest.mark.parametrize("budget, kept", [(0, 0), (2 * ROW, 2), (10 * ROW, 4)])
def test_disk_hits_beyond_the_tier_budget_are_served_from_disk(tmp_path, budget, kept):
    cache = EmbeddingCache(tmp_path, "m")
    rng = np.random.default_rng(0)
    keys = [f"{i:02d}" + "a" * 30 for i in range(4)]
    rows = {k: (rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)) for k in keys}
    for k, (hidden, pooled) in rows.items():
        cache.put(k, hidden, pooled)
    cache.attach_tier(DeviceTier("cpu", budget))
    out = cache.get_many(keys)  # before the fix: TypeError where the tier dropped a row it was just given
    assert len(cache.tier) == kept
    on_tier = [isinstance(o[0], torch.Tensor) for o in out]
    assert sum(on_tier) == kept
    for k, (hidden, pooled) in zip(keys, out):
        want = rows[k][0].astype(np.float16)
        got = hidden.numpy() if isinstance(hidden, torch.Tensor) else np.asarray(hidden)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(pooled, rows[k][1].astype(np.float16))
