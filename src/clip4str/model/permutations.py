"""Permuted sequence modelling (PSM): the permutations drawn per batch and their attention masks.

A permutation of a target of ``L`` characters is a row of ``L + 2`` positions: [B] first (0), the
characters (1..L) in the permuted order, [E] last (L + 1). Each permutation defines which earlier-in-order
tokens a position may attend to.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

# For 4 characters with mirroring, the official code samples from this fixed subset of the 24 orderings
# (itertools order), chosen so that no sampled ordering is the mirror of another.
_FOUR_CHAR_MIRROR_SELECTOR = (0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21)


def generate_permutations(
    num_chars: int,
    num_perms: int = 6,
    forward: bool = True,
    mirrored: bool = True,
    rng: np.random.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw the batch's permutations: (K, num_chars + 2) int64, K <= ``num_perms``.

    Matches the official draw, RNG calls included: fewer than 5 characters sample without replacement from
    the enumerated orderings with ``rng`` (numpy); 5 or more use ``torch.randperm`` (torch's global RNG).
    With mirroring, each drawn ordering is followed by its reverse; the second row is then always the
    reverse order with [E] first.
    """
    if num_chars == 1:
        return torch.arange(3, device=device).unsqueeze(0)
    rng = rng if rng is not None else np.random.default_rng()
    max_gen = num_perms // 2 if mirrored else num_perms
    max_perms = math.factorial(num_chars) // (2 if mirrored else 1)
    num_gen = min(max_gen, max_perms)
    perms: list[Tensor] = [torch.arange(num_chars)] if forward else []
    if num_chars < 5:
        if num_chars == 4 and mirrored:
            selector = list(_FOUR_CHAR_MIRROR_SELECTOR)
        else:
            selector = list(range(max_perms))
        orderings = list(itertools.permutations(range(num_chars)))
        pool = torch.tensor([orderings[i] for i in selector], dtype=torch.long).view(len(selector), num_chars)
        pool = pool[1:]  # the forward ordering is always first; never draw it again
        chosen = torch.stack(perms) if perms else torch.empty(0, num_chars, dtype=torch.long)
        if len(pool):
            picks = rng.choice(len(pool), size=num_gen - len(chosen), replace=False)
            chosen = torch.cat([chosen, pool[torch.as_tensor(picks, dtype=torch.long)]])
    else:
        perms.extend(torch.randperm(num_chars) for _ in range(num_gen - len(perms)))
        chosen = torch.stack(perms)
    if mirrored:
        chosen = torch.stack([chosen, chosen.flip(-1)], dim=1).reshape(-1, num_chars)
    k = len(chosen)
    full = torch.cat(
        [
            torch.zeros(k, 1, dtype=torch.long),
            chosen + 1,
            torch.full((k, 1), num_chars + 1, dtype=torch.long),
        ],
        dim=1,
    )
    if k > 1:
        full[1, 1:] = num_chars + 1 - torch.arange(num_chars + 1)
    return full.to(device)


def attention_masks(perm: Tensor) -> tuple[Tensor, Tensor]:
    """Content (L+1, L+1) and query (L+1, L+1) additive masks for one permutation of L + 2 positions.

    Position ``a`` may not see position ``b`` when ``b`` comes later than ``a`` in the permutation. The
    content mask covers inputs [B], c1..cL; the query mask covers outputs c1..cL, [E] over those inputs and
    also hides each query's own target position.
    """
    size = perm.shape[0]
    order = torch.empty_like(perm)
    order[perm] = torch.arange(size, device=perm.device)
    blocked = order[None, :] > order[:, None]  # blocked[a, b]: b comes after a
    mask = torch.zeros(size, size, device=perm.device).masked_fill(blocked, float("-inf"))
    content_mask = mask[:-1, :-1].clone()
    mask.fill_diagonal_(float("-inf"))
    query_mask = mask[1:, :-1]
    return content_mask, query_mask
