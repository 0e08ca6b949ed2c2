"""The appending KV cache: reads back exactly as transformers' DynamicLayer through every cache operation, and
appends without copying what is cached."""

import torch
from transformers import DynamicLayer

from hubert_gpt_training.tiny import tiny_config
from modeling_hubert_gpt import HubertGptForConditionalGeneration
from modeling_hubert_gpt.cache_hubert_gpt import MIN_ROOM, AppendingLayer, new_cache


def kv(batch, positions, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, positions, 4, generator=generator) for _ in range(2)]  # (B, H, n, D) keys, values


def test_appending_layer_reads_back_as_dynamic_layer():
    plain, appending = DynamicLayer(), AppendingLayer()
    batch = 3
    steps = [("update", 5), ("update", 1), ("update", 1), ("crop", -2), ("update", 3), ("select", [0, 2]),
             ("update", 1), ("repeat", 2), ("update", 70), ("crop", -30), ("update", 1), ("update", 40)]
    for i, (op, arg) in enumerate(steps):
        for layer in (plain, appending):
            if op == "update":
                got = layer.update(*kv(batch, arg, seed=i))
            elif op == "crop":
                layer.crop(arg)
            elif op == "select":
                layer.batch_select_indices(torch.tensor(arg))
            else:
                layer.batch_repeat_interleave(arg)
            if op == "update":
                torch.testing.assert_close(got[0], layer.keys, rtol=0, atol=0)
        batch = plain.keys.shape[0]
        assert torch.equal(appending.keys, plain.keys) and torch.equal(appending.values, plain.values), (i, op)
        assert appending.get_seq_length() == plain.get_seq_length()


def test_appends_write_into_room_without_copying():
    layer = AppendingLayer()
    layer.update(*kv(2, 10, seed=0))
    room = layer.key_room
    assert room.shape[-2] == MIN_ROOM and layer.keys.data_ptr() == room.data_ptr()
    for i in range(MIN_ROOM - 10):
        layer.update(*kv(2, 1, seed=i + 1))
        assert layer.key_room is room  # the same memory, written in place
    layer.crop(-5)
    layer.update(*kv(2, 5, seed=99))
    assert layer.key_room is room and layer.get_seq_length() == MIN_ROOM
    layer.update(*kv(2, 1, seed=100))  # full: moves to a room twice the size
    assert layer.key_room is not room and layer.key_room.shape[-2] == 2 * (MIN_ROOM + 1)


def test_generate_decodes_with_the_appending_cache():
    torch.manual_seed(0)
    model = HubertGptForConditionalGeneration(tiny_config()).eval()
    cache = new_cache(model.language_model)
    assert cache.layers and all(type(layer) is AppendingLayer for layer in cache.layers)
    values = 0.1 * torch.randn(2, 8000)
    mask = torch.ones_like(values, dtype=torch.long)
    mask[1, 5000:] = 0
    seen = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("cache", kwargs.get("past_key_values"))), with_kwargs=True
    )
    out = model.generate(values, mask, max_new_tokens=6, min_new_tokens=6)
    hook.remove()
    assert len(seen) == 6 and all(c is seen[0] for c in seen) and out.shape == (2, 6)
    assert all(type(layer) is AppendingLayer and layer.key_room is not None for layer in seen[0].layers)
    torch.testing.assert_close(out, model.generate(values, mask, max_new_tokens=6, min_new_tokens=6, use_cache=False),
                               rtol=0, atol=0)
