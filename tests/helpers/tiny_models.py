"""Tiny Hugging Face models from configs (dropout off, seeded): for tests that need a real
forward pass in a second. Each call builds the same weights."""

from __future__ import annotations

import torch

BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}  # fmt: skip  (vocab: MiniLM's WordPiece, so its tokenizer can feed it)


def gpt2(vocab_size: int = 512, **overrides):
    """`overrides`: other GPT2Config fields, e.g. eos_token_id=0 (a policy that stops)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def bert(head: str, num_labels: int = 2):
    """`head`: "ForMaskedLM", "ForSequenceClassification" or "ForTokenClassification"."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(**BERT, num_labels=num_labels)
    return getattr(transformers, f"Bert{head}")(config)


def bart(vocab_size: int = 512, **overrides):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=2, dropout=0.0, attention_dropout=0.0,
        **overrides,
    )  # fmt: skip
    return BartForConditionalGeneration(config)


def tiny_vlm_dir(family: str) -> str:
    """The folder of lit_ft's tiny VLM of `family` (llava | idefics3) as its model config names
    it (conf/model/tiny_vlm*.yaml), built there on first use."""
    from lit_ft.config import compose
    from lit_ft.model.tiny_vlm import ensure_built

    name = {"llava": "tiny_vlm", "idefics3": "tiny_vlm_idefics3"}[family]
    model = compose([f"model={name}"]).model
    ensure_built(model.tiny_vlm, model.name_or_path)
    return model.name_or_path
