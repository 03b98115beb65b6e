"""What lit_ft's one message for a model or dataset it cannot fetch offline must hold."""

from __future__ import annotations

# the three ways out the message offers, and the command of the third
OFFLINE_ADVICE = ("model.name_or_path=", "data.data_files=", "HF cache", "python -m lit_ft.run")


def assert_clear_offline_message(message: str, missing: list[str]) -> None:
    """`missing`: the phrases naming what could not be fetched (model/tokenizer 'gpt2', ...)."""
    assert "cannot fetch" in message and "Traceback" not in message, message
    for name in missing:
        assert name in message, (name, message)
    for advice in OFFLINE_ADVICE:
        assert advice in message, (advice, message)
