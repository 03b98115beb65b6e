"""Length grouping for variable-length examples (instruction tuning, classification).

`length_grouped_order` (`data.group_by_length=true`, the HF Trainer's `group_by_length`):
   an epoch order in which each batch's examples have similar lengths, so a batch pads to
   a length close to its own examples' (with gradient accumulation each micro-batch is one
   group: padding is per micro-batch). lit_ft's sampler (lit_ft/data/sampler.py) applies
   it to its shuffled order, so the order stays a pure function of (seed, epoch) and resumes
   exactly; under DDP the group is the global batch (batch x world size), so every rank's
   share of a step is grouped too.

       e.g. lengths 20..500 at random, batch 8: a random batch pads to ~the max of 8 draws
       (~43% of its tokens are padding); grouped within windows of 8 x 50 it pads ~2%.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MEGA_BATCH_FACTOR = 50  # groups sorted together: wide enough to match lengths, narrow enough
# to keep the order random at the scale of an epoch


def length_grouped_order(
    order: Sequence[int],
    lengths: Sequence[int],
    group: int,
    generator: torch.Generator,
    mega_batch_factor: int = MEGA_BATCH_FACTOR,
) -> list[int]:
    """Rearrange a shuffled `order` so that each run of `group` consecutive indices has
    similar lengths: cut it into mega-batches of `group x mega_batch_factor`, sort each by
    length, cut into groups, shuffle the groups with `generator`. The longest group goes
    first, so an out-of-memory shows up at step 1 rather than hours in."""
    mega = group * max(1, mega_batch_factor)
    groups: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        groups += [chunk[i : i + group] for i in range(0, len(chunk), group)]
    # Only the last group can be short; it stays last, since a short group in the middle
    # would shift every later step off the group boundaries.
    tail = groups.pop() if groups and len(groups[-1]) < group else []
    if not groups:
        return tail
    longest = groups.pop(max(range(len(groups)), key=lambda g: lengths[groups[g][0]]))
    shuffled = torch.randperm(len(groups), generator=generator).tolist()
    return [*longest, *(i for g in shuffled for i in groups[g]), *tail]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the tokens in padded batches that are padding: what grouping saves."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded if padded else 0.0
