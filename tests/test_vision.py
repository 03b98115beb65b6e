"""task=vision_instruction on two real architectures built tiny (LLaVA: a fixed 16 tokens per
image; Idefics3: crops by the image's size), each checked against Hugging Face's own path:
token ids against the processor's `apply_chat_template`, labels against a hand count of the
answer's tokens, the loss against a cross-entropy computed here from a plain forward of the
processor's batch, and the export through `pipeline("image-text-to-text")`."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_models import tiny_vlm_dir
from PIL import Image, ImageDraw

from lit_ft.data.corpora import SHAPE_QUESTIONS
from lit_ft.errors import LitFtError
from lit_ft.tasks import check_architecture
from lit_ft.tasks.vision import VisionInstructionTask

FAMILIES = ["llava", "idefics3"]
END = {"llava": "<|endoftext|>", "idefics3": "<end_of_utterance>"}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def processor(family):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vlm_dir(family))


def _image(size=(64, 48), colour=(220, 40, 40)) -> Image.Image:
    image = Image.new("RGB", size, (245, 245, 240))
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=colour)
    return image


def _chat(question="What colour is the shape?", answer="red"):
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _task(processor, **options):
    from lit_ft.model.build import ModelSpec, load_tokenizer

    tokenizer = load_tokenizer(ModelSpec(processor.tokenizer.name_or_path))
    task = VisionInstructionTask(
        tokenizer, {"messages_column": "messages", "images_column": "images"}, 128, **options
    )
    processor.tokenizer = tokenizer
    task.use_processor(processor)
    return task


def test_labels_are_the_answer_only_and_ids_are_the_processors(family, processor):
    task = _task(processor)
    chat, image = _chat(), _image()
    ids, labels = task.encode_chat(chat, [image])
    # the whole chat as Hugging Face's processor tokenizes it
    reference = processor.apply_chat_template(
        chat, tokenize=True, return_dict=True, images=[image], add_special_tokens=False
    )
    assert ids == list(reference["input_ids"][0])
    # trained: exactly the answer and its end of turn, by hand
    answer = processor.tokenizer(f" red{END[family]}\n", add_special_tokens=False)["input_ids"]
    assert [t for t in labels if t != -100] == answer
    start = labels.index(answer[0])
    assert all(t == -100 for t in labels[:start]) and labels[start:] == answer
    # the prompt is what the processor builds for generation; its image tokens are untrained
    prompt = processor.apply_chat_template(
        chat[:1], add_generation_prompt=True, tokenize=True, return_dict=True, images=[image]
    )
    assert ids[:start] == list(prompt["input_ids"][0])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    # LLaVA: (32 / 8)^2 = 16; Idefics3: a 64 x 48 image in 2 x 2 crops + the global view, 4 each
    assert ids.count(image_id) == {"llava": 16, "idefics3": 20}[family]
    assert image_id not in [t for t in labels if t != -100]


def test_the_loss_is_the_cross_entropy_of_the_answers(family, processor):
    """Two chats with images of other sizes, collated by the task: the model's loss equals a
    cross-entropy computed here over the answers' tokens from a plain forward of the batch
    the processor itself builds."""
    from transformers import AutoModelForImageTextToText

    task = _task(processor)
    chats = [_chat(answer="red"), _chat("What shape is this?", "circle")]
    images = [_image((64, 48)), _image((30, 60), (40, 80, 220))]
    rows = []
    for chat, image in zip(chats, images, strict=True):
        ids, labels = task.encode_chat(chat, [image])
        rows.append({"input_ids": ids, "labels": labels, "_images": [image]})
    batch = task.collate()(rows)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir(family)).eval()
    loss, count, _ = task.training_loss(model, batch)

    processed = processor.apply_chat_template(
        chats, tokenize=True, return_dict=True, return_tensors="pt", images=[[i] for i in images],
        processor_kwargs={"padding": True}, add_special_tokens=False,
    )  # fmt: skip
    with torch.no_grad():
        logits = model(**processed).logits.float()
    losses, n = [], 0
    for row, answer in enumerate(["red", "circle"]):
        target = processor.tokenizer(f" {answer}{END[family]}\n", add_special_tokens=False)
        target = target["input_ids"]
        end = int(processed["attention_mask"][row].sum())  # right padding: real tokens first
        for position in range(end - len(target), end):
            token = processed["input_ids"][row, position]
            log_probs = torch.log_softmax(logits[row, position - 1], dim=-1)
            losses.append(-log_probs[token])
        n += len(target)
    assert int(count) == n
    assert float(loss.detach()) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)


def test_bad_rows_are_named(processor, tmp_path):
    task = _task(processor)
    task._data_dirs, task._split = (str(tmp_path),), "train"
    two_parts = _chat()
    two_parts[0]["content"].insert(0, {"type": "image"})
    with pytest.raises(LitFtError, match=r"row 3 of the train split: its messages hold 2 image"):
        task._encode({"messages": [two_parts], "images": [[str(_save(tmp_path))]]}, [3])
    with pytest.raises(LitFtError, match=r"row 5 of the train split: image 'gone.png' .* does not"):
        task._encode({"messages": [_chat()], "images": [["gone.png"]]}, [5])
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(LitFtError, match=r"image '.*bad.png' cannot be read"):
        task._encode({"messages": [_chat()], "images": [["bad.png"]]}, [0])


def _save(folder):
    path = folder / "ok.png"
    _image().save(path)
    return path


def test_a_text_only_model_and_packing_are_refused():
    with pytest.raises(LitFtError, match="'gpt2' has no AutoModelForImageTextToText head"):
        check_architecture(VisionInstructionTask, "gpt2")
    problems = VisionInstructionTask.option_problems(
        {"train_on": "all_assistant", "packing": True, "eval_generations": 0}
    )
    assert any("task.packing=true" in p for p in problems)


def test_the_vision_tower_is_frozen_and_the_projector_trains(family):
    from transformers import AutoModelForImageTextToText

    from lit_ft.model.peft import LoraSettings, apply_lora
    from lit_ft.model.vision_parts import freeze_vision_tower, part_of, parts_text

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir(family))
    assert freeze_vision_tower(model) > 0
    text = parts_text(model)
    assert "vision tower" in text and "(frozen)" in text and "projector" in text
    for name, param in model.named_parameters():
        assert param.requires_grad == (part_of(name) != "vision tower"), name
    adapted = apply_lora(model, LoraSettings())
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all(part_of(n) != "vision tower" for n in trained)
    assert any("lora_" in n and part_of(n) == "language model" for n in trained)
    assert any(part_of(n) == "projector" for n in trained)  # trained in full beside LoRA


def test_qlora_quantizes_the_language_model_only(family):
    """Which linear layers bitsandbytes would turn 4-bit, by transformers' own rule
    (`should_convert_module`, what its 4-bit quantizer applies): the language model's, never
    the vision tower's, the projector's (trained in full) or the output embedding."""
    from transformers import AutoModelForImageTextToText
    from transformers.quantizers.quantizers_utils import should_convert_module

    from lit_ft.model.peft import LoraSettings, quantization_kwargs
    from lit_ft.model.vision_parts import PROJECTOR, VISION, part_of

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir(family))
    config = quantization_kwargs(LoraSettings(load_in_4bit=True), VISION + PROJECTOR)
    skip = config["quantization_config"].llm_int8_skip_modules
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    converted = {n for n in linears if should_convert_module(n, skip)}
    assert converted and all(part_of(n) == "language model" for n in converted)
    assert not any(n.endswith("lm_head") for n in converted)
    kept = set(linears) - converted
    assert any(part_of(n) == "vision tower" for n in kept)
    assert any(part_of(n) == "projector" for n in kept)
    language = [n for n in linears if part_of(n) == "language model" and "lm_head" not in n]
    assert converted == set(language)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_vlm", "tiny_vlm_idefics3"])
def test_the_example_learns_and_its_export_answers_in_a_pipeline(model, run_cli, tmp_path):
    """experiment=tiny_vlm_shapes, one epoch: exact match on 64 validation chats from 0 to well
    above chance (1/4 colours, 1/3 shapes); the export answers those chats in
    pipeline("image-text-to-text") as the run's own predictions did."""
    from transformers import pipeline

    out = tmp_path / "run"
    result = run_cli([
        "experiment=tiny_vlm_shapes", f"model={model}", "trainer.precision=32-true",
        "trainer.max_steps=90", "task.eval_generations=64", "trainer.enable_progress_bar=false",
        f"paths.output_dir={out}",
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((out / "results.json").read_text())
    assert figures["metrics"]["before"]["val/exact_match"] == 0
    assert figures["metrics"]["after"]["val/exact_match"] > 0.5
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["image"][0].endswith(".png") and "prediction" in rows[0]
    answer = pipeline("image-text-to-text", model=str(out / "hf_model"))
    for row in rows[:8]:
        question = next(q for q in SHAPE_QUESTIONS.values() if q in row["input"])
        chat = [{"role": "user", "content": [
            {"type": "image", "image": Image.open(row["image"][0])},
            {"type": "text", "text": question},
        ]}]  # fmt: skip
        said = answer(text=chat, max_new_tokens=4, return_full_text=False)
        assert said[0]["generated_text"].strip() == row["prediction"], row


def _colour_rows(n: int) -> list[dict]:
    colours = ["red", "blue"] * n
    return [
        {"messages": _chat("Colour?", c), "images": [Image.new("RGB", (32, 32), c)]}
        for c in colours[:n]
    ]


def test_pil_images_from_python(tmp_path):
    """FineTuner with a list of dicts holding PIL images: trained, scored, exported with the
    processor: by the run, by save_model, and from the checkpoint alone (python -m
    lit_ft.export), each loading in AutoProcessor with the chat template."""
    import lit_ft

    tuner = lit_ft.FineTuner(
        ["task=vision_instruction", "model=tiny_vlm", "data=text_files", "data.block_size=64",
         "data.messages_column=messages", "data.images_column=images", "trainer.max_steps=4",
         "trainer.precision=32-true", "trainer.enable_progress_bar=false",
         f"paths.output_dir={tmp_path}"],
        train_dataset=_colour_rows(16), eval_dataset=_colour_rows(4),
    )  # fmt: skip
    tuner.train()
    assert "val/exact_match" in tuner.results["metrics"]["after"]
    from transformers import AutoProcessor

    from lit_ft.export import export_checkpoint

    saved = tuner.save_model(tmp_path / "saved")
    exported = export_checkpoint(tuner.results["last_checkpoint"], tmp_path / "from_ckpt")
    template = AutoProcessor.from_pretrained(tiny_vlm_dir("llava")).chat_template
    for folder in (tmp_path / "hf_model", saved, exported):
        assert (folder / "processor_config.json").is_file(), folder
        processor = AutoProcessor.from_pretrained(folder)
        assert processor.image_processor is not None and processor.chat_template == template


@pytest.mark.slow
def test_an_image_folder_with_metadata(run_cli, tmp_path):
    """data.path=imagefolder: images beside a metadata.jsonl holding the chats; the datasets
    Image column is the images column, each row's file named in predictions.jsonl."""
    folder = tmp_path / "images"
    folder.mkdir()
    lines = []
    for i, row in enumerate(_colour_rows(20)):
        row["images"][0].save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "messages": row["messages"]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    result = run_cli([
        "task=vision_instruction", "model=tiny_vlm", "data=text_files", "data.path=imagefolder",
        f"data.data_files={folder}/**", "data.messages_column=messages",
        "data.images_column=image", "data.block_size=64", "data.validation_split_percentage=20",
        "trainer.max_steps=4", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        f"paths.output_dir={out}",
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["image"][0].startswith(str(folder)) for r in rows)
