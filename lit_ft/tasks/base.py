"""What every task provides, and the shared plumbing: column checks and cached `map` calls."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lit_ft.compat import dataset_fingerprint
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems
from lit_ft.tasks.chat import stop_at_end_of_turn

# Auto classes whose logits span the vocabulary at every token (the memory estimate counts
# them; compute_metrics gets their argmax by default).
VOCABULARY_LOGITS = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM")


@dataclass(frozen=True)
class TaskContext:
    """How the datamodule runs preprocessing: processes, cache use, and what the cache keys on."""

    tokenizer_hash: str
    num_proc: int | None = None
    load_from_cache: bool = True
    # the local data files' folders: where a row's relative paths (images) are found
    data_dirs: tuple[str, ...] = ()


class Task:
    """One fine-tuning task. Subclasses set the class attributes and the methods marked so."""

    name: ClassVar[str]  # as chosen on the command line: task=<name> (conf/task/<name>.yaml)
    auto_class: ClassVar[str]  # attribute of `transformers`, resolved lazily (fast import)
    description: ClassVar[str]
    columns: ClassVar[tuple[str, ...]] = ()  # data-config keys that must name a column
    optional_columns: ClassVar[tuple[str, ...]] = ()  # ...that may be null
    headline: ClassVar[str] = "val/ppl"  # the number the end-of-run line leads with
    headline_label: ClassVar[str] = "validation perplexity"  # ...and how it names it
    predicts: ClassVar[bool] = False  # writes predictions.jsonl (classification, seq2seq, SFT)
    shifted_labels: ClassVar[bool] = False  # causal LMs: token t's label is predicted at t-1
    # The loss is the model's cross-entropy over target tokens (not e.g. a preference loss):
    # causal tasks may then compute it chunk by chunk (lit_ft/model/chunked_loss.py).
    token_loss: ClassVar[bool] = True
    row_name: ClassVar[str] = "sequences"  # what one training row is, in the pre-flight
    sequences_per_row: ClassVar[int] = 1  # ...and how many sequences it puts through the model

    def __init__(self, tokenizer, columns: Mapping[str, str | None], max_length: int):
        self.tokenizer = tokenizer
        self.column = {key: columns.get(key) for key in (*self.columns, *self.optional_columns)}
        self.max_length = max_length
        self.add_eos = False  # end each text with EOS (text-block tasks); set by build_task
        self.truncation = "cut"  # data.truncation (task=instruction reads it); set by build_task
        # How a causal task's training loss is computed (lit_ft/model/chunked_loss.py): set
        # by build_network (lit_ft/model/network.py) once the model is known; None: the
        # model's own loss.
        self.loss_choice = None
        # Set by the module before each training micro-batch (lit_ft/training/module.py): a
        # seed for what the task samples then (GRPO's rollouts); other tasks ignore it.
        self.step_seed = 0
        # ...and where it is: (optimizer steps done, micro-batch index within the step's
        # window), for a task that reuses a window's samples (GRPO's task.num_iterations)
        self.window_position = (0, 0)

    @classmethod
    def option_problems(cls, options) -> Problems:
        """Bad values among the task's options (conf/task/<name>.yaml), all at once."""
        return Problems()

    @property
    def sequence_length(self) -> int:
        """The longest sequence a training row puts through the model: `max_length`, unless
        the task grows its rows (GRPO: prompt + completion), for the memory plan."""
        return self.max_length

    @classmethod
    def model_class(cls):
        import transformers

        return getattr(transformers, cls.auto_class)

    # -- data ------------------------------------------------------------------------------
    def check_columns(self, dataset, source: str) -> None:
        """Every column the task reads exists; the error lists the ones that do."""
        used = [
            k for k, v in self.column.items() if v is not None or k not in self.optional_columns
        ]
        self.require_columns(dataset, source, used)

    def require_columns(self, dataset, source: str, keys) -> None:
        """Every missing column named at once, with the columns that exist."""
        available = dataset.column_names
        missing = [f"data.{k}='{self.column[k]}'" for k in keys if self.column[k] not in available]
        if not missing:
            return
        hint = ""
        if available == ["text"] and source.startswith("data.path='text'"):
            # the text builder reads any file as lines: a CSV/JSON file shows one column
            hint = "; a CSV, JSON or Parquet file needs data.path=csv, json or parquet"
        verb = "is not a column" if len(missing) == 1 else "are not columns"
        raise LitFtError(
            f"{' and '.join(missing)} {verb} of {source} (task '{self.name}'); "
            f"columns: {', '.join(available)}{hint}"
        )

    def fit_labels(self, splits: Mapping[str, Any], source: str, column: str | None = None):
        """Learn the label set from the raw splits (classification tasks); `column`: another
        column than the data config's (pre-tokenized rows' `labels`)."""

    # -- rows already tokenized (lit_ft.FineTuner datasets with an `input_ids` column) -------
    # The columns such a row must hold, which the task's collator reads as they are; None:
    # the task reads raw columns only (it renders prompts, answers or pairs from them).
    tokenized_columns: ClassVar[tuple[str, ...] | None] = None

    def check_tokenized(self, dataset, split: str) -> None:
        """Tokenized rows this task can take, with the columns it needs (before labels are
        read from them)."""
        if self.tokenized_columns is None:
            raise LitFtError(
                f"the {split} split holds input_ids (tokenized rows), which task '{self.name}' "
                "does not take: it builds its inputs from the raw columns (data.*_column); give "
                "those instead. Tokenized rows suit causal_lm, masked_lm, "
                "sequence_classification and token_classification"
            )
        missing = [c for c in self.tokenized_columns if c not in dataset.column_names]
        if missing:
            raise LitFtError(
                f"the {split} split holds input_ids (tokenized rows) but no "
                f"{' or '.join(missing)}; task '{self.name}' needs "
                f"{', '.join(self.tokenized_columns)}. Columns: {', '.join(dataset.column_names)}"
            )

    def preprocess_tokenized(self, dataset, split: str, context: TaskContext):
        """Rows tokenized by the user: checked (columns, lengths, no empty row), labels mapped
        to the label set's ids, nothing tokenized again; other columns are dropped."""
        self.check_tokenized(dataset, split)
        for index, length in enumerate(example_lengths(dataset).to_pylist()):
            if not 0 < length <= self.max_length:
                raise LitFtError(
                    f"row {index} of the {split} split has {length} input_ids; rows need 1 to "
                    f"{self.max_length} (data.block_size, within the model's positions): "
                    f"tokenize with truncation=True, max_length={self.max_length}"
                )
        drop = [c for c in dataset.column_names if c not in self.tokenized_columns]
        return self.cached_map(
            dataset, self._tokenized_rows, split, context, "Checking", remove_columns=drop
        )

    def _tokenized_rows(self, batch: dict[str, list]) -> dict[str, list]:
        return {key: batch[key] for key in self.tokenized_columns}

    def configure_model(self, hf_config) -> None:
        """Write what the task knows into the model config (e.g. num_labels, id2label)."""

    def check_model(self, model) -> None:
        """Refuse, before training, a built model that cannot do what the task asks of it."""

    def stop_generation_at_end_of_turn(self, model) -> None:
        """generate() stops at EOS or the chat's end of turn (validation answers,
        generations.jsonl): the model's generation config learns the tokenizer's stops."""
        stop_at_end_of_turn(getattr(model, "generation_config", None), self.tokenizer)

    def prepare_with_model(self, model, datamodule) -> None:
        """Processing that needs the built model (e.g. preference tuning's precomputed
        reference log-probabilities), run once before training."""

    def preprocess(self, dataset, split: str, context: TaskContext):
        """Raw rows -> model-ready rows (lists of token ids). Implemented by each task."""
        raise NotImplementedError

    def collate(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """The function that pads a list of processed rows into a batch."""
        raise NotImplementedError

    def eval_collate(self) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """The collate of validation, test and predict batches: the training one, unless a
        task draws something at random per batch (masked LM's masks), which evaluation must
        fix per row so every validation scores the same targets at every batch size."""
        return self.collate()

    def select_rows(self, batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        """The batch's examples where `keep` (one bool per example) is true: every tensor with
        one entry per example is indexed; anything else (flags) passes unchanged."""
        rows = keep.shape[0]
        return {
            k: v[keep] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v
            for k, v in batch.items()
        }

    # -- what the pre-flight summary and results.json say about the task --------------------
    def describe(self) -> str | None:
        """One pre-flight line on how the task reads the data (e.g. the chat template)."""
        return None

    def preview(self, dataset) -> str | None:
        """One processed training example, readable, with what is trained marked."""
        return None

    def report(self) -> dict[str, Any]:
        """Facts of the processed data for results.json (e.g. packing efficiency)."""
        return {}

    def held_models(self) -> list[torch.nn.Module]:
        """Networks the task keeps beside the trained one (e.g. DPO's frozen reference), for
        the memory estimate."""
        return []

    def checkpoint_state(self) -> dict[str, Any] | None:
        """What the task must carry across a resume beyond weights and RNG (GRPO's reused
        rollouts), as plain containers and tensors; None: nothing."""
        return None

    def load_checkpoint_state(self, state: dict[str, Any] | None) -> None:
        """This process's part of `checkpoint_state()` from a resumed checkpoint."""

    def training_loss(self, model, batch: Mapping[str, torch.Tensor]):
        """(mean loss over the batch's targets, their count, extra metrics to log) for one
        training micro-batch. The module weighs micro-batches by the count
        (lit_ft/training/step_loss.py); a task with its own objective (e.g. preference pairs)
        or its own way to the loss overrides this. Causal tasks whose loss choice says so
        take the chunked cross-entropy: the same mean, without the full logits."""
        count = self.count_targets(batch)
        if (
            self.token_loss
            and self.shifted_labels
            and self.loss_choice
            and self.loss_choice.chunked
        ):
            from lit_ft.model.chunked_loss import causal_loss

            total = causal_loss(model, model_inputs(batch), self.loss_choice.chunk_tokens)
            # clamp: a micro-batch without targets has loss 0 (its weight in the step is 0)
            return total / count.clamp(min=1).to(total.dtype), count, {}
        outputs = model(**model_inputs(batch))
        return outputs.loss, count, {}

    def count_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """How many targets the model's loss for `batch` is a mean over (the token weight)."""
        return target_count(batch["labels"], self.shifted_labels)

    # -- evaluation ------------------------------------------------------------------------
    def evaluator(self):
        """A `lit_ft.tasks.metrics.Evaluator` for validation and test."""
        raise NotImplementedError

    def predict(self, model, batch: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        """Rows for predictions.jsonl: prediction and label, readable, in the batch's order."""
        return []

    def prediction_inputs(self, row: dict[str, Any]) -> dict[str, Any]:
        """A raw row's input fields for predictions.jsonl, e.g. {"input": its text}."""
        return {}

    # -- plumbing --------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Everything besides the raw data that decides the processed rows (the cache key)."""
        return {"columns": self.column, "max_length": self.max_length}

    def encode_dropping(
        self, dataset, split: str, context: TaskContext, rows: str, why: str, **map_kw
    ):
        """`self._encode` over the split, which leaves out rows it cannot use; the warning
        counts them and says why, e.g. "validation: 3 of 725 pairs are longer than
        data.block_size=128 tokens on one side and are left out". `map_kw`: e.g.
        remove_columns (default: all, the encoder returns what the task keeps)."""
        map_kw.setdefault("remove_columns", dataset.column_names)
        step = map_kw.pop("step", "Tokenizing")
        kept = self.cached_map(dataset, self._encode, split, context, step, **map_kw)
        if len(kept) < len(dataset):
            logging.getLogger(type(self).__module__).warning(
                "%s: %d of %d %s %s", split, len(dataset) - len(kept), len(dataset), rows, why
            )
        return kept

    def cached_map(self, dataset, function, split: str, context: TaskContext, step: str, **kw):
        """`dataset.map` with a fingerprint from the inputs that matter, so a second run with
        the same data, tokenizer and options loads the processed Arrow files from the cache."""
        from datasets.fingerprint import Hasher

        key = [
            dataset_fingerprint(dataset),
            self.name,
            step,
            context.tokenizer_hash,
            self.options(),
        ]
        return dataset.map(
            function,
            batched=True,
            num_proc=context.num_proc,
            load_from_cache_file=context.load_from_cache,
            new_fingerprint=Hasher.hash(repr(key)),
            desc=f"{step} {split}",
            **kw,
        )


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout layer's p set to 0, as TRL does by default for preference and reward
    training: with dropout the chosen and rejected texts of a pair see different masks, and a
    comparison of their scores measures the masks as well as the texts."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def target_count(labels: torch.Tensor, shifted: bool) -> torch.Tensor:
    """Targets in a batch's labels: one per row for a label per row (classification), else the
    labelled tokens; a causal LM's first label is no target (nothing comes before it)."""
    if labels.dim() == 1:
        return torch.tensor(labels.shape[0], device=labels.device)
    return ((labels[:, 1:] if shifted else labels) != -100).sum()


def example_lengths(dataset):
    """Tokens per row as an Arrow array, read from the columns (no Python lists of ids): of
    `input_ids`, or of all `*_input_ids` together (a preference pair's two answers)."""
    import pyarrow.compute as pc

    arrow = dataset.with_format("arrow")
    names = [c for c in dataset.column_names if c == "input_ids" or c.endswith("_input_ids")]
    lengths = pc.list_value_length(arrow[names[0]])
    for name in names[1:]:
        lengths = pc.add(lengths, pc.list_value_length(arrow[name]))
    return lengths


def pad_rows(rows: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """Right-pad lists of ints into one (batch, longest) tensor."""
    longest = length or max(len(r) for r in rows)
    out = torch.full((len(rows), longest), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


class PadCollator:
    """The one padding collator: right-pads each row's `input_ids` into a batch with its
    attention mask, and the labels as the task keeps them:

    - `labels="from_inputs"`: a copy of input_ids, -100 where the attention mask is 0 (LM
      blocks). Masking from the attention mask rather than `pad_token_id` matters for GPT-2,
      whose pad token is EOS: real end-of-text tokens keep their labels;
    - `labels="per_token"`: each row's own label list, padded with -100 (SFT, token tags);
    - `labels="per_row"`: one label per row (sequence classification).

    `attention_mask_key` renames the mask (packed SFT counts tokens with it but must not
    pass an attention mask to the model).
    """

    def __init__(self, pad_token_id: int, labels: str, attention_mask_key="attention_mask"):
        self.pad_token_id, self.labels, self.mask_key = pad_token_id, labels, attention_mask_key

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [e["input_ids"] for e in examples]
        input_ids, mask = pad_rows(rows, self.pad_token_id), attention_mask(rows)
        if self.labels == "from_inputs":
            labels = input_ids.masked_fill(mask == 0, -100)
        elif self.labels == "per_token":
            labels = pad_rows([e["labels"] for e in examples], -100)
        else:
            labels = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, self.mask_key: mask, "labels": labels}


def attention_mask(rows: list[list[int]]) -> torch.Tensor:
    return pad_rows([[1] * len(r) for r in rows], 0)


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch minus bookkeeping entries (names starting with '_') the model must not see."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}
