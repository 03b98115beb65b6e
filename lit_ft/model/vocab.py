"""`model.pad_vocab_to_multiple_of`: embedding and output rows padded to a multiple of 64.

Matrix multiplies run fastest when their dimensions are multiples of the hardware tile
(64 fits every recent GPU): GPT-2's 50,257-token output layer padded to 50,304 is the best
known case (+47 rows, 0.1% more output FLOPs, a faster kernel). The extra ids never occur in
the data, so training only learns to give them near-zero probability.

The padding lives only inside training and its checkpoints: the export crops the model back
to its original vocabulary, so the saved model matches its tokenizer and `generate` can
never emit an id that the tokenizer cannot decode.
"""

from __future__ import annotations

import copy
import math

# Stored on the model config (and so in every checkpoint) while the vocabulary is padded.
UNPADDED_KEY = "lit_ft_unpadded_vocab_size"


def padded_size(vocab_size: int, multiple: int | None) -> int:
    """The vocabulary rounded up to a multiple: e.g. ceil(50257 / 64) * 64 = 50304."""
    if not multiple or multiple <= 1:
        return vocab_size
    return math.ceil(vocab_size / multiple) * multiple


def grow_vocab(model, tokenizer):
    """Embeddings (and a tied or untied output layer) grown to hold every token id, when the
    tokenizer gained tokens (a chat template's end-of-turn marker, lit_ft/tasks/chat.py):
    e.g. 4,096 + <|im_end|> = 4,097 rows. Before `pad_vocab`, so the padding is on top of them
    and the export crops back to 4,097. The new rows start at the mean of the others
    (transformers' mean resizing), a token the model already gives average scores to."""
    current = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > current:  # a model whose vocabulary has room already keeps its size
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return model


def grown_size(vocab_size: int, tokenizer) -> int:
    """The vocabulary `grow_vocab` gives a model of `vocab_size` rows (checked on resume)."""
    return max(vocab_size, len(tokenizer))


def pad_vocab(model, multiple: int | None):
    """Resize the token embeddings (and a tied or untied output layer) up to a multiple."""
    current = model.get_input_embeddings().num_embeddings
    target = padded_size(current, multiple)
    if target == current:
        return model
    # mean_resizing=False: the new rows start like any other row (the model's own init);
    # HF's mean resizing would sample from the embeddings' covariance for no benefit here.
    model.resize_token_embeddings(target, mean_resizing=False)
    setattr(model.config, UNPADDED_KEY, current)
    return model


def unpadded(model):
    """The model as the tokenizer knows it: a cropped copy when padded, else the model itself."""
    original = getattr(model.config, UNPADDED_KEY, None)
    if not original:
        return model
    cropped = copy.deepcopy(model)  # the training run's model keeps its padded shape
    cropped.resize_token_embeddings(original, mean_resizing=False)
    delattr(cropped.config, UNPADDED_KEY)
    return cropped
