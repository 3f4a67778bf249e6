"""Training recipes as plain Python files: each file in `training/configs/` defines
`config = TrainConfig(...)`, so a recipe can compute values, carry comments citing where its
numbers come from, and be diffed like code.

`load_config(path, overrides)` runs the file and applies `key=value` overrides from the
command line (values parsed as Python literals, else kept as strings).
"""

from __future__ import annotations

import ast
import dataclasses
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    """Everything one training run needs; fields are grouped as in the config files."""

    name: str = ""  # defaults to the config file's stem
    # --- model ------------------------------------------------------------------------------
    backbone: str = "r50"  # a key of training.backbones.BACKBONES
    backbone_kwargs: dict[str, object] = field(default_factory=dict)  # e.g. {"width": 8}
    embedding_size: int = 512
    head: str = "arcface"  # a key of training.heads.HEADS
    head_kwargs: dict[str, object] = field(default_factory=dict)  # e.g. {"s": 64, "m": 0.5}
    sample_rate: float = 1.0  # Partial FC: fraction of class centres used per step
    center_loss_weight: float = 0.0  # λ of the center loss; 0 = off
    # --- data -------------------------------------------------------------------------------
    data: str = "synthetic"  # folder, label.txt, train.rec or "synthetic" (see data.open_dataset)
    num_classes: int | None = None  # None: read from the data set
    image_size: int = 112  # side of the aligned crops (112 for every real face data set)
    synthetic_identities: int = 16
    synthetic_images_per_identity: int = 8
    num_workers: int = 2  # data loader processes per rank
    flip: bool = True  # random horizontal flips
    # --- optimisation -----------------------------------------------------------------------
    batch_size: int = 128  # per rank and micro-batch
    # Micro-batches summed into one optimizer step (arcface_torch's `gradient_acc`): the global
    # batch is batch_size x world size x gradient_accumulation; steps count optimizer steps.
    gradient_accumulation: int = 1
    # The global batch the recipe's lr was tuned for (None: no check). When the run's global
    # batch differs, `lr_scaling` "linear" multiplies lr by global / recipe (Goyal et al. 2017,
    # "linear scaling rule"); "warn" keeps lr and prints a warning.
    recipe_global_batch: int | None = None
    lr_scaling: Literal["linear", "warn"] = "linear"
    epochs: float = 20  # may be fractional: a recipe's iteration count in epochs
    max_steps: int | None = None  # stop earlier than `epochs` (smoke runs)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["poly", "step"] = "poly"
    lr_power: float = 2.0  # poly: lr·(1 − progress)^power
    lr_milestones: tuple[float, ...] = ()  # step: epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0
    grad_clip_norm: float | None = 5.0  # max gradient norm of the backbone; None = off
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    seed: int = 0
    # --- divergence guard -------------------------------------------------------------------
    # A step whose loss or gradients are not finite is skipped (no update; under float16 the
    # gradient scaler lowers its scale). After `max_bad_steps` such steps in a row the run
    # stops ("stop") or reloads the weights of the last finite checkpoint and goes on with the
    # next batches ("rollback", at most 3 times).
    max_bad_steps: int = 20
    on_divergence: Literal["stop", "rollback"] = "stop"
    # --- output and evaluation --------------------------------------------------------------
    output_dir: str = ""  # defaults to runs/<name>
    log_every: int = 50  # steps between CSV/TensorBoard rows
    checkpoint_every: int = 2000  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted
    eval_sets: tuple[str, ...] = ()  # .bin files, "pairs.txt@images_dir" or "synthetic"
    eval_every: int = 2000
    eval_flip: bool = True
    # Accuracy protocol: "insightface" (arcface_torch eval/verification.py: squared-L2
    # thresholds 0, 0.01 … 3.99), "exact" (best cosine midpoint), or "auto" (insightface for
    # .bin sets, exact for the others); see training.evaluate.
    eval_protocol: Literal["auto", "insightface", "exact"] = "auto"
    target_far: float = 1e-3  # FAR at which evaluation reports the threshold

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A copy of `config` with `key=value` overrides (e.g. `max_steps=100`)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    changes: dict[str, object] = {}
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator or key not in names:
            known = ", ".join(sorted(names))
            raise ValueError(f"bad override {override!r}: use key=value with key one of {known}")
        changes[key] = _parse_value(value)
    return dataclasses.replace(config, **changes)


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of one shipped in training/configs/."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = CONFIG_DIR / f"{candidate.stem}.py"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__"))
    raise FileNotFoundError(f"config {path} not found; shipped configs: {known}")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Run a config file and return its `config`, with overrides applied."""
    config_path = resolve_config_path(path)
    namespace = runpy.run_path(str(config_path))
    config = namespace.get("config")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"{config_path} must define `config = TrainConfig(...)`")
    if not config.name:
        config = dataclasses.replace(config, name=config_path.stem)
    return apply_overrides(config, overrides or [])
