"""The LLM's KV cache for hubert-gpt's decoding: `DynamicCache` whose layers append in place.

transformers' `DynamicLayer` grows by `torch.cat`, so every decoding step copies each layer's whole cache (at batch
16 on a CPU, a few MB per layer and step, with a fresh allocation each time). `AppendingLayer` keeps spare room
after the cached positions (it doubles when full) and writes the new keys and values into it; the cache is a view of
the room. Cropping (speculative decoding's rollback) narrows the view and the next update writes over what was
cropped. Anything else that replaces the tensors (selecting or repeating batch rows, beam reordering) is taken over
as is: the next update moves it into new room. Keys and values read back exactly as `DynamicLayer`'s.

Remote code: imports torch and the public transformers API only.
"""

import inspect

import torch
from transformers import DynamicCache, DynamicLayer

MIN_ROOM = 64  # positions allocated at least per layer


def _append(cached, room, new):
    """cached (B, H, n, D) (a view at the start of `room`, or any tensor), new (B, H, m, D) -> (the n + m positions
    as a view of a room that holds them, that room)."""
    n = cached.shape[-2] if cached.dim() == new.dim() else 0  # a fresh layer holds an empty 1-d tensor
    m = new.shape[-2]
    in_room = (
        room is not None
        and n + m <= room.shape[-2]
        and room.shape[:-2] == new.shape[:-2]
        and room.dtype == new.dtype
        and (n == 0 or (cached.data_ptr() == room.data_ptr() and cached.stride() == room.stride()))
    )
    if not in_room:
        room = new.new_empty(*new.shape[:-2], max(2 * (n + m), MIN_ROOM), new.shape[-1])  # (B, H, capacity, D)
        if n:
            room[..., :n, :] = cached
    room[..., n : n + m, :] = new
    return room[..., : n + m, :], room


class AppendingLayer(DynamicLayer):
    """A `DynamicLayer` that writes new positions into spare room instead of concatenating (see the module doc)."""

    key_room = value_room = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.key_room = _append(self.keys, self.key_room, key_states)
        self.values, self.value_room = _append(self.values, self.value_room, value_states)
        return self.keys, self.values

    def reset(self):
        self.key_room = self.value_room = None
        super().reset()


def new_cache(language_model):
    """An empty KV cache for `language_model`: a DynamicCache whose plain layers are `AppendingLayer`s (sliding-window
    and other special layers stay as transformers builds them)."""
    cache = DynamicCache(config=language_model.config)
    cache.layers = [AppendingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_keyword(language_model):
    """The name of the cache argument of `language_model.forward` / `generate` ("cache", or the older
    "past_key_values"), and whether forward takes `logits_to_keep`."""
    params = inspect.signature(language_model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params
