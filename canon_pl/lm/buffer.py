"""The shuffle buffer, made reproducible at any position (pure torch).

Activations arrive in *blocks* (the kept tokens of a fixed number of contexts). Each block is split at random into
halves ``A_k`` and ``B_k``; generation ``g`` serves a shuffle of ``B_{g-1} ∪ A_g`` in batches, so the buffer holds
two blocks and refills when half of it has been served, and every token is served exactly once. Generation ``g``
depends only on blocks ``g-1`` and ``g``, so a run resumes at ``(generation, offset)`` by recomputing two blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def _generator(seed: int, *key: int) -> torch.Generator:
    value = seed
    for k in key:
        value = (value * 1_000_003 + k + 1) % (2**61 - 1)
    return torch.Generator().manual_seed(value)


def split_block(block: Tensor, seed: int, k: int) -> tuple[Tensor, Tensor]:
    """Random halves ``(A_k, B_k)`` of block ``k``: ``[n, d]`` -> ``[n_a, d]``, ``[n - n_a, d]``."""
    perm = torch.randperm(block.shape[0], generator=_generator(seed, k, 0)).to(block.device)
    half = block.shape[0] // 2
    return block[perm[:half]], block[perm[half:]]


def iterate_buffered_batches(
    load_block: Callable[[int], Tensor],
    batch_size: int,
    seed: int,
    start: tuple[int, int] = (0, 0),
) -> Iterator[tuple[tuple[int, int], Tensor]]:
    """Yield ``((generation, offset_after), batch [batch_size, d])`` from position ``start = (generation, offset)``.

    ``load_block(k)`` returns block ``k`` as ``[n_k, d]`` (on the training device); it raises ``StopIteration``
    or returns an empty tensor when the source is exhausted. Remainders smaller than a batch are dropped.
    """
    generation, offset = start
    previous_b: Tensor | None = None
    if generation > 0:
        previous = load_block(generation - 1)
        previous_b = split_block(previous, seed, generation - 1)[1] if previous.numel() else None
    while True:
        try:
            block = load_block(generation)
        except StopIteration:
            block = None
        if block is None or block.numel() == 0:
            if previous_b is None or previous_b.shape[0] < batch_size:
                return
            pool = previous_b
            next_b = None
        else:
            a, next_b = split_block(block, seed, generation)
            pool = a if previous_b is None else torch.cat([previous_b, a])
        perm = torch.randperm(pool.shape[0], generator=_generator(seed, generation, 1)).to(pool.device)
        n_batches = pool.shape[0] // batch_size
        for b in range(offset, n_batches):
            yield (generation, b + 1), pool[perm[b * batch_size:(b + 1) * batch_size]]
        if next_b is None:
            return
        previous_b, generation, offset = next_b, generation + 1, 0
