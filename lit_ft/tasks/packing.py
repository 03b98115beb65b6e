"""Packing: which examples share a block, how full the blocks are, and whether it is safe.

`best_fit_decreasing` places the longest examples first, each into the fullest block it still
fits in. Packing in data order (start a new block when the next example does not fit) leaves
every block's tail empty whenever a long example follows a few short ones; best fit fills
those tails with the short examples that come later. `packing_efficiency` is the share of
block positions that hold real tokens, printed in the pre-flight summary and results.json.

`keeps_packed_examples_apart` is checked before training with `task.packing=true`. Packing
puts several examples in one row with `position_ids` restarting at 0 and no attention
mask. Transformers then keeps the examples apart (`sdpa`/`eager` build a block-diagonal
causal mask from the position ids, `flash_attention_2` reads the boundaries from them),
but only for architectures that implement it; for the others the examples would silently
attend to each other, so lit_ft checks with one tiny forward instead of trusting a list.
"""

from __future__ import annotations

import bisect

import torch


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into blocks of at most `capacity` tokens.

    Longest first (ties in data order, so the result is deterministic); each example goes to
    the block with the least room that still holds it, else opens a new block. `room` keeps
    (free positions, block number) sorted, so each placement is one binary search: n log n.
    Blocks come back in the order they were opened, their examples longest first.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    blocks: list[list[int]] = []
    room: list[tuple[int, int]] = []
    for i in order:
        need = min(lengths[i], capacity)  # examples are cut to the block size before packing
        at = bisect.bisect_left(room, (need, -1))
        if at == len(room):
            blocks.append([i])
            free, block = capacity - need, len(blocks) - 1
        else:
            free, block = room.pop(at)
            blocks[block].append(i)
            free -= need
        bisect.insort(room, (free, block))
    return blocks


def packing_efficiency(lengths, capacity: int) -> float:
    """Real tokens / block positions, e.g. 3 blocks of 128 holding 320 tokens: 83%."""
    lengths = list(lengths)
    return sum(lengths) / (len(lengths) * capacity) if lengths else 0.0


def keeps_packed_examples_apart(model) -> bool:
    """Whether `model` keeps packed examples apart given only restarting position_ids: one
    packed forward of two short examples must give the second one's logits as if alone."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        vocab = model.get_input_embeddings().num_embeddings
        first = torch.arange(1, 6, device=parameter.device) % vocab
        second = torch.arange(7, 11, device=parameter.device) % vocab
        positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))])
        with torch.no_grad():
            packed = model(
                input_ids=torch.cat([first, second])[None],
                position_ids=positions[None].to(parameter.device),
                use_cache=False,
            ).logits[0, len(first) :]
            alone = model(input_ids=second[None], use_cache=False).logits[0]
        # fp32 agrees to ~1e-6; bf16/fp16 weights round differently along the two paths, but
        # attending to the other example moves logits by far more than this.
        tolerance = 1e-4 if parameter.dtype == torch.float32 else 5e-2
        return torch.allclose(packed.float(), alone.float(), atol=tolerance, rtol=tolerance)
    except Exception:  # an architecture that rejects position_ids or use_cache
        return False
    finally:
        model.train(was_training)
