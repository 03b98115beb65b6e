"""Resuming: which checkpoint to resume from, and the state Lightning does not save itself."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_ft.errors import LitFtError
from lit_ft.log import say, warn
from lit_ft.training.sharded_checkpoint import is_sharded_checkpoint, read_sharded

# which checkpoint stream wrote a file (lit_ft.training.best_checkpoint marks its own)
STREAM_KEY = "lit_ft_stream"


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, read once (memory-mapped: only its index is read
    until a tensor is touched) and shared by every check before `trainer.fit` loads it."""

    path: str
    checkpoint: dict[str, Any]


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The path `resolve_resume` picks (None: start fresh)."""
    resume = resolve_resume(ckpt_path, checkpoint_dir)
    return resume.path if resume else None


def resolve_resume(ckpt_path: str | None, checkpoint_dir: str | Path) -> ResumePoint | None:
    """Which checkpoint `trainer.fit` resumes from.

    - `None`: start fresh;
    - `last`: the newest valid checkpoint of this run dir; an error if there is none;
    - `auto`: the same, but start fresh (and say so) when there is none: for jobs that are
      re-queued after preemption with the same command;
    - a path: that file, which must load.
    """
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "auto"):
        newest = _newest_valid(Path(checkpoint_dir))
        if newest is not None:
            say(f"resuming from {newest.path}")
            return newest
        if ckpt_path == "auto":
            say(f"ckpt_path=auto: no checkpoint in {checkpoint_dir}, starting fresh")
            return None
        raise LitFtError(
            f"ckpt_path=last but {checkpoint_dir} holds no checkpoint. To resume a run, point "
            "paths.output_dir at that run's directory (e.g. paths.output_dir=outputs/runs/<date>); "
            "to start fresh, drop ckpt_path (or use ckpt_path=auto)"
        )
    path = Path(ckpt_path).expanduser()
    if not (path.is_file() or is_sharded_checkpoint(path)):
        raise LitFtError(f"ckpt_path='{ckpt_path}' is not a checkpoint file (or fsdp2 directory)")
    checkpoint, problem = _open(path)
    if problem:
        raise LitFtError(f"ckpt_path='{ckpt_path}' cannot be resumed from: {problem}")
    return ResumePoint(str(path), checkpoint)


def newest_valid_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The most recently written checkpoint that loads; broken ones are skipped with a warning."""
    newest = _newest_valid(checkpoint_dir)
    return Path(newest.path) if newest else None


def _newest_valid(checkpoint_dir: Path) -> ResumePoint | None:
    """The checkpoint furthest into training that loads.

    Ranked by the training step it holds, not by when the file was written: the best
    checkpoint of step 20 is written after step 20's validation, so it is newer on disk than
    `last.ckpt` of the same step, and after a kill a re-trained life may write an older step
    last. At one step, a file of the resumable stream (saved at a step boundary) comes before
    one the best-checkpoint stream saved inside a validation; then the newest file.
    """
    ranked, seen = [], set()

    # One state may have several names (last.ckpt links to the newest step file, a best file
    # of the same step is a hard link to it): each is read once, under last.ckpt's name where
    # it has it, then a step file's. Lightning never deletes the file a run resumed from, so
    # resuming from a step file's own name would keep that file past its rotation.
    def preference(path: Path) -> tuple[bool, bool, str]:
        return path.name != "last.ckpt", not path.name.startswith("step"), path.name

    names = sorted(checkpoint_dir.glob("*.ckpt"), key=preference)
    for path in names:
        try:
            stat = path.stat()  # the link's target
        except OSError:  # a link whose file was removed
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        checkpoint, problem = _open(path)
        if problem is not None:
            warn(f"skipping {path}: {problem}")
            continue
        at_step_boundary = checkpoint.get(STREAM_KEY) != "best"
        rank = (int(checkpoint.get("global_step", 0)), at_step_boundary, stat.st_mtime)
        ranked.append((rank, ResumePoint(str(path), checkpoint)))
    return max(ranked, key=lambda item: item[0])[1] if ranked else None


def checkpoint_problem(path: Path) -> str | None:
    """None if `path` loads as a lit_ft checkpoint with weights_only=True, else what is wrong."""
    return _open(path)[1]


def _open(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None) when `path` loads with weights_only=True, else (None, the problem)."""
    try:
        if path.is_dir():  # trainer=fsdp2: shards + meta.pt; the weights' shapes, unread
            checkpoint = read_sharded(path)
        else:  # mmap: only the index is read, so checking a multi-GB file is cheap.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, wrong format, disallowed pickle...
        return None, f"it is truncated or not a checkpoint ({type(err).__name__}: {err})"
    if "state_dict" not in checkpoint or "loops" not in checkpoint:
        return None, "it holds no training state (state_dict/loops missing)"
    return checkpoint, None


def check_same_data(resume: ResumePoint | None, current: dict[str, Any], force: bool) -> None:
    """Refuse to resume onto different data, tokenizer or sampler seed (unless forced).

    The checkpoint's data position counts examples of *its* data; on other data it would skip
    or repeat examples silently.
    """
    if resume is None:
        return
    checkpoint, ckpt_path = resume.checkpoint, resume.path
    saved = next(
        (
            v["fingerprint"]
            for v in checkpoint.values()
            if isinstance(v, dict) and "fingerprint" in v
        ),
        None,
    )
    if saved is None:
        return  # not written by a lit_ft datamodule: nothing to compare
    keys = [*current, *(k for k in saved if k not in current)]  # one side's only too
    changed = [key for key in keys if saved.get(key) != current.get(key)]
    if not changed:
        return
    what = ", ".join(f"{key} ({saved.get(key)} -> {current.get(key)})" for key in changed)
    if force:
        warn(f"force_resume=true: resuming although {what} changed")
        return
    raise LitFtError(
        f"refusing to resume from {ckpt_path}: {what} changed since it was saved, so its data "
        "position would skip or repeat examples. Resume with the original data, tokenizer and "
        "seed, start fresh (drop ckpt_path), or set force_resume=true to resume anyway"
    )


def check_same_model(resume: ResumePoint | None, hf_config, spec) -> None:
    """Refuse a checkpoint whose weights do not fit this run's model, naming both models.

    Lightning would fail deep inside `load_state_dict` with a size-mismatch traceback, after
    the data and the model were loaded. The shapes here come from the model built on the meta
    device (no memory, no weights read).
    """
    if resume is None:
        return
    import copy

    from lit_ft.model.peft import CHECKPOINT_KEY
    from lit_ft.model.vocab import padded_size
    from lit_ft.tasks import get_task

    checkpoint, ckpt_path = resume.checkpoint, resume.path
    if CHECKPOINT_KEY in checkpoint:  # adapter-only: AdapterCheckpoint checks it on load
        return
    hf_config = copy.deepcopy(hf_config)
    # the run pads the embeddings after building the model (a VLM's: its language model's)
    text = hf_config.get_text_config()
    text.vocab_size = padded_size(text.vocab_size, spec.pad_vocab_to_multiple_of)
    with torch.device("meta"):
        model = get_task(spec.task).model_class().from_config(hf_config)
    name = spec.name_or_path
    saved = {k.removeprefix("model."): v.shape for k, v in checkpoint["state_dict"].items()}
    here = {k: v.shape for k, v in model.state_dict().items()}
    differ = sorted(k for k in saved.keys() & here.keys() if saved[k] != here[k])
    missing, extra = sorted(here.keys() - saved.keys()), sorted(saved.keys() - here.keys())
    if not (differ or missing or extra):
        return
    info = checkpoint.get("lit_ft", {})
    theirs = info.get("model_spec", {}).get("name_or_path", "an unknown model")
    their_type = info.get("hf_config", {}).get("model_type", "?")
    if differ:
        k = differ[0]
        detail = f"{k} is {tuple(saved[k])} there and {tuple(here[k])} here"
    else:
        detail = f"parameters missing there: {missing[:3]}; only there: {extra[:3]}"
    their_config, our_config = info.get("hf_config", {}), hf_config.to_dict()
    sizes = [  # the architecture numbers that differ, e.g. "n_embd 32 there, 64 here"
        f"{key} {their_config[key]} there, {value} here"
        for key, value in our_config.items()
        if isinstance(value, int) and key in their_config and their_config[key] != value
    ]
    if sizes:
        detail += f" ({'; '.join(sizes[:3])})"
    raise LitFtError(
        f"refusing to resume from {ckpt_path}: it holds another model ('{theirs}', "
        f"{their_type}) than this run's '{name}' ({model.config.model_type}): {detail}. Resume "
        "with the model it was trained with, or start fresh (drop ckpt_path)"
    )


def check_resume_fits(resume: ResumePoint | None, data, spec, force: bool) -> None:
    """The run's step after the data is prepared: a checkpoint to resume from must fit both
    the model (shapes, with the vocabulary the task grows) and the data (fingerprints),
    refused here, before any model is built or trained. `data`: the prepared data
    (lit_ft/data/prepare.py)."""
    if resume is None:
        return
    import copy

    from lit_ft.model.vocab import grown_size

    grown = copy.deepcopy(data.hf_config)  # the rows the model will have (a chat's end of turn)
    text = grown.get_text_config()  # itself, or a vision-language model's language model's
    text.vocab_size = grown_size(text.vocab_size, data.tokenizer)
    check_same_model(resume, grown, spec)
    check_same_data(resume, data.datamodule.fingerprint(), force=force)


def last_checkpoint(trainer) -> str | None:
    """The newest checkpoint the Trainer's checkpoint callbacks wrote (None: none)."""
    paths = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks]
    return next((p for p in paths if p), None)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that never leave a half-written file where a good one stood.

    The file is written to a temporary name in the target directory, flushed and fsynced,
    then renamed over the target (`os.replace` is atomic on POSIX). A crash mid-save leaves the
    previous checkpoint intact and removes the temporary file. Loads use weights_only=True:
    lit_ft checkpoints hold only plain containers and tensors.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:  # disk full, quota, permissions: the user's to fix
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            kept = "the previous one is kept" if path.exists() else "no earlier one was there"
            raise LitFtError(
                f"could not save checkpoint {path}: {err.strerror or err} ({free_mb:,.0f} MB "
                f"free on its disk); {kept}. Free space (or set paths.output_dir elsewhere) "
                "and resume with ckpt_path=last"
            ) from err
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as err:
            raise LitFtError(f"checkpoint '{path}' cannot be loaded: {err}") from err


def link_atomically(source: str | Path, target: str | Path) -> bool:
    """Make `target` a hard link to `source` (replacing any file there at once); False where
    the filesystem has no hard links, and nothing changed. Safe with AtomicCheckpointIO: a
    later save of either name writes a new file and leaves the other name's data alone."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    _fsync_dir(target.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (the directory entry), where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
