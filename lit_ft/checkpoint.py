"""Finding the checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path

from lit_ft.errors import LitFtError


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """`None` starts fresh; `last` is the newest checkpoint of this run dir; else a file."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        return str(newest_checkpoint(Path(checkpoint_dir)))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise LitFtError(f"ckpt_path='{ckpt_path}' is not a file")
    return str(path)


def newest_checkpoint(checkpoint_dir: Path) -> Path:
    last = checkpoint_dir / "last.ckpt"
    if last.is_file():
        return last
    found = sorted(checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LitFtError(
            f"ckpt_path=last but {checkpoint_dir} holds no checkpoint. To resume a run, point "
            "paths.output_dir at that run's directory (e.g. paths.output_dir=outputs/runs/<date>); "
            "to start fresh, drop ckpt_path"
        )
    return found[-1]
