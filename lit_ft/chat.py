"""Talk to a model you trained, right after training.

    python -m lit_ft.chat outputs/runs/<run>              # its export (hf_model/)
    python -m lit_ft.chat outputs/runs/<run>/hf_model     # an export, merged or adapter-only
    python -m lit_ft.chat outputs/runs/<run>/checkpoints/last.ckpt
    echo "What does os.getcwd do?" | python -m lit_ft.chat <export> --temperature 0

A model with a chat template (the one the run saved with its tokenizer) is chatted with: each
line is a user turn, the reply streams as it is generated, and the conversation is kept until
`/reset`; a model without one completes each line as plain text. `/exit` (or end of input)
leaves. From a pipe there is no prompt decoration: one reply per input line, so scripts can
drive it. Generation: `--temperature` (0: greedy), `--top-p`, `--max-new-tokens`; it stops at
EOS or the chat's end of turn. LoRA: a merged export loads as any model; an adapter-only export
(peft.export=adapter) is applied to its base and merged; a LoRA checkpoint likewise.

A vision-language model (task=vision_instruction) is chatted with through its processor:
`/image PATH` (or `--image PATH` for the first turn) attaches an image to the next user turn,
and the images stay in the conversation until `/reset`.

    printf '/image shapes/0001.png\nWhat colour is the shape?\n' | python -m lit_ft.chat <run>
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from lit_ft.errors import EXIT_USER_ERROR, LitFtError

COMMANDS = ("/image", "/reset", "/exit")


def load_for_chat(source: str | Path):
    """(model in eval mode, tokenizer, what was loaded) from a run directory, an export
    directory (full or adapter-only) or a lit_ft checkpoint."""
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt" or path.is_dir() and path.suffix == ".ckpt":
        from lit_ft.export import load_checkpoint_model

        model, tokenizer, processor = load_checkpoint_model(path)
        if processor is not None:  # a vision-language run
            return _merged(model).eval(), processor, f"checkpoint {path} (images: /image PATH)"
        return _causal(_merged(model), path), tokenizer, f"checkpoint {path}"
    if (path / "hf_model").is_dir():  # a run directory: the model it handed on
        path = path / "hf_model"
    if (path / "adapter_config.json").is_file():
        return (*_adapter_export(path), f"adapter export {path} (merged into its base)")
    if not (path / "config.json").is_file():
        raise LitFtError(
            f"'{source}' holds no model: give a run directory (with hf_model/), an export "
            "directory (config.json, as from_pretrained reads) or a checkpoint (.ckpt)"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if _reads_images(config):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained(path, config=config)
        processor = AutoProcessor.from_pretrained(path)
        return model.eval(), processor, f"export {path} (images: /image PATH)"
    model = AutoModelForCausalLM.from_pretrained(path, config=_causal_config(config, path))
    return model.eval(), AutoTokenizer.from_pretrained(path), f"export {path}"


def _reads_images(config) -> bool:
    """An image-text-to-text model (LLaVA, Idefics3, Qwen2-VL, ...): chatted with through
    its processor, images and text."""
    from transformers.models.auto import modeling_auto

    return config.model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _causal_config(config, path: Path):
    from transformers.models.auto import modeling_auto

    if config.model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LitFtError(
            f"'{path}' is a {config.model_type} model without a causal LM head "
            f"({', '.join(getattr(config, 'architectures', None) or ['?'])}); chat needs a "
            "generative model (task=causal_lm, instruction, dpo or grpo)"
        )
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures):
        raise LitFtError(
            f"'{path}' holds a {architectures[0]}, not a text generator; chat needs a model "
            "trained with task=causal_lm, instruction, dpo or grpo"
        )
    return config


def _causal(model, path: Path):
    _causal_config(model.config, path)
    return model.eval()


def _merged(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _adapter_export(path: Path):
    """An adapter-only export, applied to its base and merged."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lit_ft.model.peft import adapter_base

    base_dir = adapter_base(path)
    if _reads_images(AutoConfig.from_pretrained(base_dir)):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        base = AutoModelForImageTextToText.from_pretrained(base_dir)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        return model.eval(), AutoProcessor.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, path)
    return _causal(model.merge_and_unload(), path), AutoTokenizer.from_pretrained(path)


class ChatSession:
    """A conversation with one model: `reply(text)` adds the user's turn, generates the
    answer (streamed to `on_text` piece by piece) and keeps both; `reset()` forgets.
    `tokenizer` may be a vision-language model's processor: `attach(image)` then adds an
    image to the next user turn."""

    def __init__(
        self,
        model,
        tokenizer,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        system: str | None = None,
    ) -> None:
        from lit_ft.tasks.chat import stop_at_end_of_turn

        # A processor (image processor + tokenizer) reads images; its tokenizer decodes.
        self.processor = tokenizer if hasattr(tokenizer, "image_processor") else None
        self.model = model
        self.tokenizer = tokenizer.tokenizer if self.processor is not None else tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.system = system
        self.settings = {"max_new_tokens": max_new_tokens}
        if temperature > 0:
            self.settings |= {"do_sample": True, "temperature": temperature, "top_p": top_p}
        else:
            self.settings |= {"do_sample": False}
        stop_at_end_of_turn(getattr(model, "generation_config", None), self.tokenizer)
        self.messages: list[dict] = []
        self.images: list = []  # every image of the conversation, in order
        self.pending: list = []  # attached to the next user turn
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.images, self.pending = [], []

    def attach(self, path: str | Path) -> None:
        """Add the image at `path` to the next user turn."""
        if self.processor is None:
            raise LitFtError("/image: this model reads text only (no image processor)")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(Path(path).expanduser()) as image:
                self.pending.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise LitFtError(f"/image: cannot read '{path}' as an image: {err}") from err

    def _user_turn(self, text: str) -> dict:
        if self.processor is None:
            return {"role": "user", "content": text}
        parts = [{"type": "image"} for _ in self.pending]
        return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}

    def prompt_inputs(self, text: str) -> dict:
        """What generation continues: the whole conversation so far with the new user turn
        and the assistant's generation prompt (with a processor: its images' pixels too),
        or the plain text (no chat template)."""
        if not self.chat:
            return {"input_ids": self.tokenizer(text, return_tensors="pt")["input_ids"]}
        messages = [*self.messages, self._user_turn(text)]
        if self.processor is None:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            return {"input_ids": ids}
        rendered = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        images = [*self.images, *self.pending] or None
        inputs = self.processor(text=rendered, images=images, return_tensors="pt")
        return {k: v for k, v in inputs.items() if k != "attention_mask"}

    def prompt_ids(self, text: str):
        return self.prompt_inputs(text)["input_ids"]

    def reply(self, text: str, on_text: Callable[[str], None] = lambda piece: None) -> str:
        import torch
        from transformers import TextStreamer

        class Pieces(TextStreamer):
            def on_finalized_text(self, piece: str, stream_end: bool = False) -> None:
                if piece:
                    on_text(piece)

        inputs = {k: v.to(self.model.device) for k, v in self.prompt_inputs(text).items()}
        ids = inputs["input_ids"]
        streamer = Pieces(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                attention_mask=torch.ones_like(ids),
                streamer=streamer,
                pad_token_id=pad if pad is not None else self.tokenizer.eos_token_id,
                **self.settings,
            )
        answer = self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        if self.chat:
            said = answer if self.processor is None else [{"type": "text", "text": answer}]
            self.messages += [self._user_turn(text), {"role": "assistant", "content": said}]
            self.images, self.pending = [*self.images, *self.pending], []
        return answer


def converse(
    session: ChatSession,
    lines,
    write: Callable[[str], None],
    interactive: bool,
    complain: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> None:
    """Each input line a turn; `/image PATH` attaches an image to the next turn, `/reset`
    forgets the conversation, `/exit` leaves. A bad image is said (`complain`) and the
    conversation goes on."""
    if interactive:
        write("you> ")
    for raw in lines:
        text = raw.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip().startswith("/image"):
            try:
                session.attach(text.strip().removeprefix("/image").strip())
                if interactive:
                    write(f"(image {len(session.pending)} attached to your next turn)\n")
            except LitFtError as err:
                complain(f"lit_ft: error: {err}")
            if interactive:
                write("you> ")
            continue
        if text.strip() == "/reset":
            session.reset()
            if interactive:
                write("(conversation reset)\nyou> ")
            continue
        if text.strip():
            if interactive:
                write("model> ")
            session.reply(text, on_text=write)
            write("\n")
        if interactive:
            write("you> ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_ft.chat",
        description="Chat with (or complete text from) a model a lit_ft run trained.",
    )
    parser.add_argument("source", help="a run directory, an export directory or a checkpoint")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--system", help="a system message that starts the conversation")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--image", action="append", default=[], help="an image for the first turn (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights" is noise here
        torch.manual_seed(args.seed)
        model, tokenizer, loaded = load_for_chat(args.source)
        if torch.cuda.is_available():
            model.to("cuda")
        interactive = sys.stdin.isatty()
        session = ChatSession(
            model, tokenizer, args.temperature, args.top_p, args.max_new_tokens, args.system
        )
        for image in args.image:
            session.attach(image)
    except LitFtError as err:
        print(f"lit_ft: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if interactive:
        mode = "chat (template saved with the model)" if session.chat else "plain completion"
        print(f"[lit_ft] {loaded}: {mode}; /reset forgets, /exit leaves", flush=True)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    converse(session, sys.stdin, write, interactive)


if __name__ == "__main__":
    main()
