"""Where rows come from: `datasets.load_dataset` on a Hub name or a local builder with files
(or a built-in corpus), its errors turned into messages that name the keys to change, and the
small facts both datamodules (in memory and streamed) need: block length, tokenizer hash."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lit_ft.compat import packaged_builder_module
from lit_ft.data import corpora
from lit_ft.errors import LitFtError
from lit_ft.problems import Problems

log = logging.getLogger(__name__)

DataFiles = str | Sequence[str] | Mapping[str, str | Sequence[str]] | None


def load_source(
    path: str,
    name: str | None,
    data_files: DataFiles,
    corpus: str | None,
    corpus_dir: str | None,
    load_kwargs: Mapping[str, Any],
    streaming: bool = False,
):
    """`datasets.load_dataset` for `data.*`; a missing or empty source becomes a LitFtError."""
    import datasets

    kwargs = builder_kwargs(path, load_kwargs)
    files = corpora.files_to_read(data_files, corpus, corpus_dir)
    if files:
        kwargs["data_files"] = expand_files(files)
    how = "stream" if streaming else "load"
    try:
        return datasets.load_dataset(path, name, streaming=streaming, **kwargs)
    except FileNotFoundError as err:
        raise LitFtError(f"data.path='{path}' data.data_files={data_files}: {err}") from err
    except TypeError as err:  # a load_kwargs key the builder's config does not take
        raise LitFtError(
            f"data.load_kwargs={dict(kwargs)} for data.path='{path}': {err}; remove that key "
            "(the builder's options are its BuilderConfig fields in the datasets docs)"
        ) from err
    except ValueError as err:
        message = f"could not {how} data.path='{path}' ({name}): {err}"
        if "corresponds to no data" in str(err):  # datasets' words for zero rows
            message = f"data.path='{path}' ({data_files}) has no rows: it is empty"
        raise LitFtError(message) from err


def builder_options(builder: str) -> frozenset[str]:
    """The keyword options of a local `datasets` builder (text, csv, ...): its config's fields."""
    import dataclasses
    import importlib

    import datasets

    module = importlib.import_module(packaged_builder_module(builder))
    config = next(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, datasets.BuilderConfig)
        and value is not datasets.BuilderConfig
    )
    return frozenset(field.name for field in dataclasses.fields(config))


def builder_kwargs(path: str, load_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """`load_kwargs` less the options that belong to another local builder than `path`.

    A data config written for one builder keeps its options when the user switches builder:
    python_reference's `sample_by: paragraph` (a text-builder option) reached the csv builder
    of `data.path=csv data.data_files=r.csv` and crashed it. Such a key is left out; a key no
    local builder knows still goes to `load_dataset` (a Hub dataset's own option, or a typo
    that load_source turns into a message).
    """
    from lit_ft.hub import LOCAL_DATA_BUILDERS

    kwargs = dict(load_kwargs or {})
    if path not in LOCAL_DATA_BUILDERS:
        return kwargs
    own = builder_options(path)
    others = set().union(*(builder_options(b) for b in LOCAL_DATA_BUILDERS if b != path))
    for key in [k for k in kwargs if k not in own and k in others]:
        log.debug("data.load_kwargs.%s is not an option of the %s builder; left out", key, path)
        del kwargs[key]
    return kwargs


def data_dirs(data_files: DataFiles, corpus: str | None, corpus_dir: str | None) -> tuple[str, ...]:
    """The folders of the local files a source reads (a built-in corpus's too), in order: where
    paths inside its rows (task=vision_instruction's images) are relative to."""
    files = (
        corpora.files_to_read(data_files, corpus, corpus_dir) if (data_files or corpus) else None
    )
    if not files:
        return ()
    if isinstance(files, str):
        files = [files]
    elif isinstance(files, Mapping):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    folders = (str(Path(f).expanduser().resolve().parent) for f in files)
    return tuple(dict.fromkeys(folders))


def expand_files(data_files: DataFiles) -> DataFiles:
    if isinstance(data_files, str):
        return str(Path(data_files).expanduser())
    if isinstance(data_files, Mapping):
        return {k: expand_files(v) for k, v in data_files.items()}
    return [str(Path(f).expanduser()) for f in data_files]


# data.block_size=null takes the model's length, capped: 1,024 tokens is GPT-2's own length and
# keeps a default run's activations modest on a model that allows 8K-128K positions.
DEFAULT_BLOCK_CAP = 1024
# What transformers sets model_max_length to when a tokenizer names none (int(1e30)): no limit.
_NO_TOKENIZER_LIMIT = 10**9


def clamp_block_size(
    block_size: int | None, max_positions: int | None, tokenizer_max: int | None = None
) -> int:
    """The block length a run uses. null (the text_files default): the longest the model and its
    tokenizer allow, at most DEFAULT_BLOCK_CAP, and no warning (the user asked for nothing).
    A value the user set is clamped to the model's positions, with a warning, as HF run_clm does."""
    if block_size is None:
        limits = [max_positions, tokenizer_max, DEFAULT_BLOCK_CAP]
        # e.g. the bundled tiny GPT-2: min(256 positions, 256, 1,024) = 256
        return min(n for n in limits if isinstance(n, int) and 0 < n < _NO_TOKENIZER_LIMIT)
    if max_positions is not None and block_size > max_positions:
        log.warning(
            "data.block_size=%d exceeds the model's %d positions; using %d",
            block_size,
            max_positions,
            max_positions,
        )
        return max_positions
    return block_size


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary and rules (not of its Python object state)."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return Hasher.hash(backend.to_str() if backend is not None else tokenizer)


def data_problems(data, given: bool = False) -> Problems:
    """The rules of `data.*` (conf/data): the source, its files, sizes and split. `given`: the
    rows came as objects (lit_ft.FineTuner(train_dataset=...)): no source to check."""
    from lit_ft.hub import LOCAL_DATA_BUILDERS
    from lit_ft.preflight import data_path_problem

    problems = Problems()
    if data.block_size is not None:  # null: the model's length (clamp_block_size)
        problems.positive_int("data.block_size", data.block_size)
    problems.positive_int("data.batch_size", data.batch_size)
    pct = data.validation_split_percentage
    problems.need(
        isinstance(pct, int | float) and 0 <= pct < 100,
        f"data.validation_split_percentage must be in [0, 100), got {pct!r}",
    )
    if given:
        problems.need(
            not data.get("streaming"),
            "data.streaming=true reads files as a stream; datasets given as objects are in "
            "memory already: drop data.streaming",
        )
        return problems
    if data.path == "mixture":  # its sources: lit_ft.data.mixture.mixture_problems
        return problems
    problems.need(
        bool(data.path), "data.path is empty: give a Hub dataset name or text/csv/json/parquet"
    )
    if data.path:
        problems.add(data_path_problem(data.path))
    problems.need(
        data.corpus is None or data.corpus in corpora.CORPORA,
        f"data.corpus='{data.corpus}' is unknown; available: {', '.join(corpora.CORPORA)}",
    )
    problems.need(
        not (data.path in LOCAL_DATA_BUILDERS and data.name),
        f"data.name='{data.name}' names a Hub dataset's config; data.path={data.path} has none",
    )
    if data.path in LOCAL_DATA_BUILDERS:
        problems.need(
            bool(data.data_files or data.corpus),
            f"data.path='{data.path}' needs data.data_files (local files)",
        )
        if data.data_files:  # the user's own files, even where a built-in corpus is configured
            for missing in _missing_files(data.data_files):
                problems.append(f"data.data_files: '{missing}' does not exist")
            for empty in _empty_files(data.data_files):
                problems.append(f"data.data_files: '{empty}' is empty (0 bytes)")
    return problems


def _literal_files(data_files) -> list[str]:
    if isinstance(data_files, str):
        files = [data_files]
    elif isinstance(data_files, Mapping):
        files = [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        files = list(data_files)
    # Globs (train-*.parquet) are resolved by datasets; only literal paths are checked here.
    return [f for f in files if not any(c in f for c in "*?[")]


def _missing_files(data_files) -> list[str]:
    return [f for f in _literal_files(data_files) if not Path(f).expanduser().exists()]


def _empty_files(data_files) -> list[str]:
    paths = [Path(f).expanduser() for f in _literal_files(data_files)]
    return [str(p) for p in paths if p.is_file() and p.stat().st_size == 0]
