"""Files a training run leaves behind, and reading them back.

- A backbone file (`model.pt` at the end of a run, and inside every checkpoint): the weights
  plus what is needed to rebuild the network (name, keyword arguments, embedding size) and
  what the pack manifest reports (head, margins, data). `evaluate` and `export` read it.
- A checkpoint folder `checkpoints/step_NNNNNNNN/`: the backbone file plus one `rank_R.pt` per
  rank with everything else a resume needs (class-centre shard, optimizer, scheduler, scaler,
  position in the data, RNG states). A checkpoint whose weights or buffers hold NaN/inf also
  holds a `NONFINITE` marker file: pruning never deletes the newest checkpoint without one,
  and `latest` resumes from it.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.backbones import create_backbone

BACKBONE_FORMAT = "faceverify-backbone/1"
BACKBONE_FILE = "model.pt"
CHECKPOINT_DIR = "checkpoints"
STEP_PREFIX = "step_"
NONFINITE_MARKER = "NONFINITE"


def rank_file(rank: int) -> str:
    return f"rank_{rank}.pt"


def save_backbone(path: Path, backbone: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write weights + `metadata` (must hold `backbone`, `backbone_kwargs`, `embedding_size`)."""
    missing = {"backbone", "backbone_kwargs", "embedding_size"} - metadata.keys()
    if missing:
        raise ValueError(f"backbone metadata lacks {sorted(missing)}")
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    torch.save({"format": BACKBONE_FORMAT, **metadata, "state_dict": state}, path)
    return path


def find_backbone_file(path: Path) -> Path:
    """`path` itself, or the backbone file inside a run folder or checkpoint folder."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / BACKBONE_FILE).is_file():
        return path / BACKBONE_FILE
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / BACKBONE_FILE
    raise FileNotFoundError(
        f"no backbone at {path}: give a {BACKBONE_FILE} file, a run folder or a checkpoint folder"
    )


def load_backbone(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of a backbone file (in eval mode) and return it with its metadata."""
    file = find_backbone_file(path)
    saved = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != BACKBONE_FORMAT:
        raise ValueError(f"{file} is not a backbone file written by `python -m training train`")
    backbone = create_backbone(
        saved["backbone"], embedding_size=saved["embedding_size"], **saved["backbone_kwargs"]
    )
    backbone.load_state_dict(saved.pop("state_dict"))
    return backbone.to(device).eval(), saved


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"{STEP_PREFIX}{step:08d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(STEP_PREFIX)
        and (p / rank_file(0)).is_file()
        and not p.name.endswith(".tmp")
    )


def is_finite_checkpoint(folder: Path) -> bool:
    """False for a checkpoint marked as holding NaN/inf values."""
    return not (Path(folder) / NONFINITE_MARKER).exists()


def latest_checkpoint(output_dir: Path, finite_only: bool = False) -> Path | None:
    """The newest complete checkpoint (with `finite_only`, the newest without NaN/inf)."""
    checkpoints = list_checkpoints(output_dir)
    if finite_only:
        checkpoints = [folder for folder in checkpoints if is_finite_checkpoint(folder)]
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints, and never the newest finite one (a
    diverged run must not delete its last good state)."""
    if keep <= 0:
        return
    checkpoints = list_checkpoints(output_dir)
    last_finite = latest_checkpoint(output_dir, finite_only=True)
    for old in checkpoints[:-keep]:
        if old != last_finite:
            shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Every random generator the training loop draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
