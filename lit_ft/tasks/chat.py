"""Chats rendered with a chat template, and which of their tokens are trained.

The masks come from the template itself, rendered prefix by prefix: for the i-th message, if
it is the assistant's, the chat up to it rendered *with* the generation prompt is where its
answer starts, and the chat up to and including it is where the answer (with the template's
end-of-turn text) ends. Every rendered prefix must be the start of the whole rendered chat;
then the characters between those two offsets are exactly what the model writes for that
turn at inference, and the tokens that overlap them are trained. This needs no
`{% generation %}` tags, so it works with any template that renders a chat as a growing
prefix, and a template that does not (one that rewrites earlier turns once later ones exist)
is refused, naming the turn, instead of being replaced by another layout.

`resolve_template` picks the template: the tokenizer's own, a named one (`NAMED_TEMPLATES`),
or a Jinja string. It is set on the tokenizer, so the exported tokenizer carries it and
inference formats prompts exactly as training did. Its end-of-turn marker ("<|im_end|>") is
made one special token when the vocabulary splits it (the bundled GPT-2 spells it in 8
pieces): `generate` can only stop on a token id, so a marker in pieces would let the model
run on into the next turn. The model's embeddings grow to match (lit_ft/model/vocab.py) and
the generation config stops at EOS or that id (`stop_at_end_of_turn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_ft.errors import LitFtError

TRAIN_ON = ("all_assistant", "last_assistant")


def train_on_problem(train_on) -> str | None:
    """task.train_on: one of TRAIN_ON (instruction and vision_instruction)."""
    if train_on in TRAIN_ON:
        return None
    return f"task.train_on='{train_on}' is unknown; use one of {', '.join(TRAIN_ON)}"


# Templates for tokenizers that have none. Each renders a generation prompt that ends where
# the answer's first character is, so the answer's tokens do not straddle the boundary.
NAMED_TEMPLATES: dict[str, str] = {
    # "user: ...\nassistant: ...<eos>": no new tokens, works with any vocabulary.
    "plain": (
        "{%- for m in messages -%}"
        "{{ m['role'] }}:{{ ' ' + m['content'] }}"
        "{%- if m['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}assistant:{% endif -%}"
    ),
    # OpenAI's ChatML, as Qwen and many others use it.
    "chatml": (
        "{%- for m in messages -%}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif -%}"
    ),
    # Llama 3's header layout.
    "llama3": (
        "{{- bos_token -}}"
        "{%- for m in messages -%}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] }}"
        "{{- '<|eot_id|>' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        "{%- endif -%}"
    ),
}


def is_jinja(text: str) -> bool:
    return "{{" in text or "{%" in text


def template_problem(setting: str | None) -> str | None:
    """What is wrong with a `task.chat_template` value, checked with the config."""
    if setting is None or setting in NAMED_TEMPLATES or is_jinja(str(setting)):
        return None
    return (
        f"task.chat_template='{setting}' is neither a template name nor Jinja; use null (the "
        f"tokenizer's own, else plain), one of {', '.join(NAMED_TEMPLATES)}, or a Jinja string"
    )


def resolve_template(tokenizer, setting: str | None) -> str:
    """Set the chat template on `tokenizer` and say where it came from ("the tokenizer's own",
    "chatml", "a Jinja string")."""
    if setting is None:
        if getattr(tokenizer, "chat_template", None):
            return "the tokenizer's own"
        setting = "plain"  # the tokenizer has none: printed in the pre-flight, saved with it
    tokenizer.chat_template = NAMED_TEMPLATES.get(setting, setting)
    return setting if setting in NAMED_TEMPLATES else "a Jinja string"


def add_end_of_turn_token(tokenizer) -> str | None:
    """Make the template's end-of-turn marker one special token when the vocabulary splits
    it; return the marker when added. task=instruction does this (the model learns to write
    it); dpo does not: it starts from a chat model, which has the token already. A marker
    with spaces inside ("### End") is text the data may hold too, so it stays text
    (generation still stops on it as a stop string)."""
    marker = end_of_turn(tokenizer)
    if marker is None or any(c.isspace() for c in marker):
        return None
    if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1:
        return None  # already one token: e.g. Qwen's own <|im_end|>
    # replace_extra_special_tokens=False: a tokenizer's own extra special tokens stay
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [marker]}, replace_extra_special_tokens=False
    )
    return marker


def end_of_turn_id(tokenizer) -> int | None:
    """The id of the end-of-turn marker when it is one token (None: no marker, or pieces)."""
    marker = _templated_end_of_turn(tokenizer)
    if marker is None:
        return None
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _templated_end_of_turn(tokenizer) -> str | None:
    """`end_of_turn` of any task's tokenizer: None without a template, or with one that will
    not render a plain user/assistant exchange (a model's own template may demand more)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return end_of_turn(tokenizer)
    except Exception:  # jinja's TemplateError, or the template's own raise_exception
        return None


def stop_at_end_of_turn(generation_config, tokenizer):
    """The generation config told to stop at EOS *or* the end of turn: eos_token_id becomes a
    list, e.g. [0, 4096] (EOS, <|im_end|>), as Qwen's and Llama 3's own configs have it."""
    turn = end_of_turn_id(tokenizer)
    if generation_config is None or turn is None:
        return generation_config
    current = generation_config.eos_token_id
    stops = list(current) if isinstance(current, (list, tuple)) else [current]
    stops += [tokenizer.eos_token_id, turn]
    generation_config.eos_token_id = list(dict.fromkeys(s for s in stops if s is not None))
    return generation_config


def chat_settings(tokenizer) -> dict[str, Any]:
    """What a run changed on its tokenizer, as plain values a checkpoint stores, so an export
    from the checkpoint alone rebuilds the same tokenizer (`apply_chat_settings`)."""
    marker = _templated_end_of_turn(tokenizer)
    added = [marker] if marker in tokenizer.all_special_tokens else []
    return {"chat_template": getattr(tokenizer, "chat_template", None), "added_tokens": added}


def apply_chat_settings(tokenizer, settings: dict[str, Any] | None):
    """The tokenizer as the run had it: its chat template and added end-of-turn token."""
    if not settings:
        return tokenizer
    if settings.get("chat_template"):
        tokenizer.chat_template = settings["chat_template"]
    if settings.get("added_tokens"):
        tokenizer.add_special_tokens(
            {"additional_special_tokens": settings["added_tokens"]},
            replace_extra_special_tokens=False,
        )
    return tokenizer


def end_of_turn(tokenizer) -> str | None:
    """The text the template closes an assistant turn with ("<|im_end|>", "<|eot_id|>"), where
    generated answers stop; None when it adds nothing, or only the EOS token."""
    marker = "\x00answer\x00"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    text = render(tokenizer, chat, generation_prompt=False)
    after = text[text.rfind(marker) + len(marker) :].strip() if marker in text else ""
    return after if after and after != tokenizer.eos_token else None


def render(tokenizer, messages: Sequence[dict[str, Any]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=generation_prompt, tokenize=False
    )


def answer_spans(
    tokenizer, messages: Sequence[dict[str, Any]], train_on: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of the assistant answers to train on.

    E.g. ChatML, [user "Hi", assistant "Hello"]:
    "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n"; the span
    starts after "<|im_start|>assistant\\n" (the generation prompt) and ends after the
    assistant's "<|im_end|>\\n", so the end of the turn is learned too.
    """
    full = render(tokenizer, messages, generation_prompt=False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise LitFtError("data.messages_column: a chat without an assistant message")
    if train_on == "last_assistant":
        turns = turns[-1:]
    spans = []
    for i in turns:
        prompt = _render_prompt(tokenizer, messages[:i])
        through = render(tokenizer, messages[: i + 1], generation_prompt=False)
        for text, what in ((prompt, "with the generation prompt"), (through, "")):
            if not full.startswith(text):
                raise LitFtError(_divergence(messages, i, what, text, full))
        if not through.startswith(prompt):
            raise LitFtError(_divergence(messages, i, "the answer", prompt, through))
        spans.append((len(prompt), len(through)))
    return full, spans


def _render_prompt(tokenizer, messages) -> str:
    if messages:
        return render(tokenizer, messages, generation_prompt=True)
    try:  # an answer with nothing before it: a template may still open with a system prompt
        return render(tokenizer, [], generation_prompt=True)
    except Exception:
        return ""


def _divergence(messages, turn: int, what: str, prefix: str, whole: str) -> str:
    at = next((k for k, (a, b) in enumerate(zip(prefix, whole, strict=False)) if a != b), None)
    at = min(len(prefix), len(whole)) if at is None else at
    seen = ", ".join(f"{k}:{m['role']}" for k, m in enumerate(messages[: turn + 1]))
    return (
        f"task.chat_template: the template does not render this chat as a growing prefix: "
        f"the chat up to message {turn} ({seen}) rendered {what} differs from the whole chat "
        f"at character {at} ({prefix[at : at + 30]!r} vs {whole[at : at + 30]!r}), so the "
        "trained tokens cannot be told apart from the prompt. Templates that rewrite earlier "
        "turns (e.g. dropping past reasoning) do this; set task.chat_template=chatml (or "
        "another template), or task.train_on=last_assistant if only the last turn diverges"
    )


def tokens_and_labels(tokenizer, text: str, spans: list[tuple[int, int]]):
    """Token ids of the rendered chat (as `apply_chat_template(tokenize=True)` gives them) and
    labels: the id where a token overlaps a trained span, else -100."""
    if not getattr(tokenizer, "is_fast", False):  # no offsets: tokenize piece by piece
        return _tokens_by_piece(tokenizer, text, spans)
    # verbose=False: a chat longer than the model is cut to the block size next
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        # overlap, not containment: a token that joins the prompt's last character to the
        # answer's first (BPE merges across the boundary) is still part of the answer
        trained = any(start < stop and end > begin for begin, stop in spans)
        labels.append(token if trained else -100)
    return ids, labels


def _tokens_by_piece(tokenizer, text: str, spans: list[tuple[int, int]]):
    cuts = sorted({0, len(text), *(edge for span in spans for edge in span)})
    ids, labels = [], []
    for begin, stop in zip(cuts, cuts[1:], strict=False):
        piece = tokenizer(text[begin:stop], add_special_tokens=False)["input_ids"]
        trained = any(begin >= a and stop <= b for a, b in spans)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    return ids, labels


def marked(tokenizer, ids: Sequence[int], labels: Sequence[int]) -> str:
    """The example as text with the trained tokens between « and »."""
    pieces, run, trained = [], [], None
    for token, label in zip(ids, labels, strict=True):
        if (label != -100) != trained and run:
            pieces.append(_piece(tokenizer, run, trained))
            run = []
        trained = label != -100
        run.append(token)
    if run:
        pieces.append(_piece(tokenizer, run, trained))
    return "".join(pieces)


def _piece(tokenizer, run: list[int], trained: bool) -> str:
    text = tokenizer.decode(run, skip_special_tokens=False)
    return f"«{text}»" if trained else text
