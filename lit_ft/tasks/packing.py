"""Packing safety.

`keeps_packed_examples_apart` is checked before training with `task.packing=true`. Packing
puts several examples in one row with `position_ids` restarting at 0 and no attention
mask. Transformers then keeps the examples apart (`sdpa`/`eager` build a block-diagonal
causal mask from the position ids, `flash_attention_2` reads the boundaries from them),
but only for architectures that implement it; for the others the examples would silently
attend to each other, so lit_ft checks with one tiny forward instead of trusting a list.
"""

from __future__ import annotations

import torch


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
