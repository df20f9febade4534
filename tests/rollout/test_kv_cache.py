import pytest
import torch

from rlhfkit.rollout.kv_cache import PreallocatedLayer, preallocated_cache


def _states(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=g), torch.randn(
        batch, 2, length, 4, generator=g
    )


def test_updates_equal_concatenation_through_repeat_and_select():
    layer = PreallocatedLayer(capacity=8)
    keys, values = _states(2, 3, seed=0)
    layer.update(keys, values)
    layer.batch_repeat_interleave(3)
    keys, values = keys.repeat_interleave(3, dim=0), values.repeat_interleave(3, dim=0)
    for step in range(4):
        new_keys, new_values = _states(6 if step < 2 else 3, 1, seed=step + 1)
        if step == 2:
            kept = torch.tensor([0, 2, 5])
            layer.batch_select_indices(kept)
            keys, values = keys[kept], values[kept]
        keys, values = torch.cat([keys, new_keys], dim=2), torch.cat([values, new_values], dim=2)
        got_keys, got_values = layer.update(new_keys, new_values)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
    assert layer.get_seq_length() == 7


def test_writing_past_the_capacity_is_refused():
    layer = PreallocatedLayer(capacity=4)
    layer.update(*_states(1, 3, seed=0))
    with pytest.raises(ValueError, match="holds 4 positions"):
        layer.update(*_states(1, 2, seed=1))


def test_the_cache_creates_one_preallocated_layer_per_model_layer():
    cache = preallocated_cache(capacity=5)
    for layer_idx in range(3):
        cache.update(*_states(1, 2, seed=layer_idx), layer_idx)
    assert [type(layer) for layer in cache.layers] == [PreallocatedLayer] * 3
    assert cache.get_seq_length() == 2
