"""`python -m lit_ft.chat`: a piped prompt gets a reply and exit 0; the reply is what plain
transformers generates from the same conversation (greedy); the conversation is kept and
/reset forgets it; run dirs, checkpoints and adapter exports load; a directory without a
causal LM is refused with what to give instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_ft.chat import ChatSession, converse, load_for_chat
from lit_ft.config.compose import asset_path
from lit_ft.tasks.chat import NAMED_TEMPLATES

BUNDLED = asset_path("tiny-gpt2-pystdlib")


def _chat(args: list[str], text: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_ft.chat", *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_a_piped_prompt_gets_a_reply_and_exits_0():
    result = _chat([str(BUNDLED), "--temperature", "0", "--max-new-tokens", "12"], "hello\n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() and "you>" not in result.stdout  # no decoration in a pipe
    assert "Loading weights" not in result.stderr


@pytest.fixture(scope="module")
def chat_model():
    model = AutoModelForCausalLM.from_pretrained(BUNDLED).eval()
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED)
    tokenizer.chat_template = NAMED_TEMPLATES["chatml"]
    return model, tokenizer


def test_greedy_replies_are_plain_transformers_on_the_whole_conversation(chat_model):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, temperature=0, max_new_tokens=10)
    first = session.reply("Name a module.")
    pieces = []
    second = session.reply("And another?", on_text=pieces.append)
    assert "".join(pieces).strip() == second  # streamed piece by piece
    conversation = [
        {"role": "user", "content": "Name a module."},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And another?"},
    ]
    ids = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=10, pad_token_id=tokenizer.eos_token_id,
            eos_token_id=model.generation_config.eos_token_id,
        )  # fmt: skip
    assert second == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_reset_forgets_and_exit_leaves(chat_model):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, temperature=0, max_new_tokens=4)
    written = []
    converse(session, ["hi\n", "again\n", "/reset\n", "fresh\n", "/exit\n", "never\n"],
             written.append, interactive=False)  # fmt: skip
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["fresh"]
    assert "".join(written).count("\n") >= 3  # three replies, each ended by a newline


def test_a_run_directory_and_a_model_without_chat_template_complete_text(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(BUNDLED, run / "hf_model")
    model, tokenizer, loaded = load_for_chat(run)
    assert loaded == f"export {run / 'hf_model'}"
    session = ChatSession(model, tokenizer, temperature=0, max_new_tokens=6)
    assert not session.chat
    text = "One-line docstring for os.getcwd():"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    want = model.generate(input_ids=ids, do_sample=False, max_new_tokens=6,
                          pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    got = session.reply(text)
    assert got == tokenizer.decode(want[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert session.messages == []  # plain completion keeps no conversation


def test_what_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    empty = _chat([str(tmp_path)], "hi\n")
    assert empty.returncode == 2 and "holds no model" in empty.stderr
    assert "Traceback" not in empty.stderr
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    refused = _chat([str(tmp_path / "classifier")], "hi\n")
    assert refused.returncode == 2 and "BertForSequenceClassification, not a text generator" in (
        refused.stderr
    )


@pytest.mark.slow
def test_a_checkpoint_and_an_adapter_export_chat_as_the_trained_weights(text_file, tmp_path):
    """A LoRA run exporting the adapter alone: chatting with its last checkpoint, with the
    adapter export and with the run directory gives the same greedy reply."""
    import lit_ft

    results = lit_ft.train_from_overrides(
        ["peft=lora", "peft.r=4", "peft.export=adapter", "data=text_files",
         f"data.data_files={text_file}", "data.block_size=32", "trainer.max_steps=4",
         "callbacks.resumable_checkpoint.every_n_train_steps=4", "optimizer.lr=1e-2",
         "trainer.enable_progress_bar=false", "callbacks.generations.num_prompts=0",
         "evaluate_before=false", "trainer.precision=32-true", f"paths.output_dir={tmp_path}"]
    )  # fmt: skip
    run = results["output_dir"]
    assert os.path.isfile(f"{run}/hf_model/adapter_config.json")  # the adapter alone
    replies = []
    for source in (f"{run}/checkpoints/last.ckpt", f"{run}/hf_model", run):
        model, tokenizer, _ = load_for_chat(source)
        session = ChatSession(model, tokenizer, temperature=0, max_new_tokens=8)
        replies.append(session.reply("The quick brown"))
    assert replies[0] == replies[1] == replies[2], replies
    piped = _chat([f"{run}/hf_model", "--temperature", "0", "--max-new-tokens", "8"],
                  "The quick brown\n")  # fmt: skip
    assert piped.returncode == 0 and piped.stdout.strip() == replies[0]


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_a_vision_language_model_answers_about_its_image_as_the_pipeline_does(family, tmp_path):
    """An export of task=vision_instruction: `/image PATH` puts the image in the next turn,
    and the reply is what `pipeline("image-text-to-text")` answers to the same chat, sampled
    from the same seed (so the two agree only if every step's distribution does: a random
    tiny model's greedy answer repeats one token whatever it sees); the image stays in the
    conversation for the next turn."""
    from helpers.tiny_models import tiny_vlm_dir
    from PIL import Image, ImageDraw
    from transformers import pipeline

    folder = tiny_vlm_dir(family)  # a Hugging Face folder: config, weights, processor
    image = Image.new("RGB", (40, 40), (245, 245, 240))
    ImageDraw.Draw(image).ellipse((6, 6, 34, 34), fill=(220, 40, 40))
    image.save(tmp_path / "red.png")
    model, processor, loaded = load_for_chat(folder)
    assert "/image" in loaded
    session = ChatSession(model, processor, temperature=1.0, top_p=1.0, max_new_tokens=8)
    written, complaints = [], []
    lines = [f"/image {tmp_path / 'red.png'}\n", "What colour is the shape?\n"]
    torch.manual_seed(7)
    converse(session, lines, written.append, interactive=False, complain=complaints.append)
    answer = "".join(written).strip()
    assert len(set(answer)) > 2  # sampled: not one token repeated
    assert not complaints and len(session.images) == 1 and not session.pending

    pipe = pipeline("image-text-to-text", model=folder)
    chat = [{"role": "user", "content": [
        {"type": "image", "image": image}, {"type": "text", "text": "What colour is the shape?"},
    ]}]  # fmt: skip
    stops = model.generation_config.eos_token_id  # EOS and the end of turn, as chat stops
    settings = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "eos_token_id": stops}
    torch.manual_seed(7)
    expected = pipe(text=chat, max_new_tokens=8, return_full_text=False, generate_kwargs=settings)
    assert answer == expected[0]["generated_text"].strip()

    # the next turn still holds the first one's image: one image's placeholders in the prompt
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = session.prompt_ids("And its shape?")
    one = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert (ids == image_token).sum() == (processor(text=one, images=[image],
        return_tensors="pt")["input_ids"] == image_token).sum()  # fmt: skip
    session.reply("And its shape?")

    converse(session, ["/image nowhere.png\n"], written.append, False, complaints.append)
    assert (
        complaints
        == [
            "lit_ft: error: /image: cannot read 'nowhere.png' as an image: "
            + complaints[0].split("as an image: ", 1)[1]
        ]
        and "No such file" in complaints[0]
    )


def test_an_image_for_a_text_only_model_is_refused(chat_model):
    session = ChatSession(*chat_model, temperature=0, max_new_tokens=2)
    complaints = []
    converse(session, ["/image x.png\n"], lambda t: None, False, complaints.append)
    assert complaints == ["lit_ft: error: /image: this model reads text only (no image processor)"]
    result = _chat([str(BUNDLED), "--image", "x.png"], "hello\n")
    assert result.returncode == 2 and "reads text only" in result.stderr
