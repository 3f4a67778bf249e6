"""Training recipes as plain Python files: each file in `training/configs/` defines
`config = TrainConfig(...)`, so a recipe can compute values, carry comments citing where its
numbers come from, and be diffed like code.

`load_config(path, overrides)` runs the file and applies `key=value` overrides from the
command line (values parsed as Python literals, else kept as strings).

`TrainConfig` is a pydantic dataclass: every construction (a recipe, `--set`, `replace`) is
validated, field by field, before anything trains. A bad value or an unknown key raises
`ConfigError` (a ValueError) with one message per bad key, naming the key and what it
accepts (unknown keys get a "did you mean"), joined by "; " into one line.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import runpy
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Value constraints shared by several fields.
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Built = TypeVar("Built")


class ConfigError(ValueError):
    """A training config that cannot run: one message per bad key."""


@dataclass(config=ConfigDict(extra="forbid"))
class TrainConfig:
    """Everything one training run needs; fields are grouped as in the config files."""

    name: str = ""  # defaults to the config file's stem
    # --- model ------------------------------------------------------------------------------
    backbone: str = "r50"  # a key of training.backbones.BACKBONES
    backbone_kwargs: dict[str, object] = field(default_factory=dict)  # e.g. {"width": 8}
    embedding_size: PositiveInt = 512
    head: str = "arcface"  # a key of training.heads.HEADS
    head_kwargs: dict[str, object] = field(default_factory=dict)  # e.g. {"s": 64, "m": 0.5}
    # Partial FC: fraction of the class centres used per step.
    sample_rate: Annotated[float, Field(gt=0, le=1)] = 1.0
    center_loss_weight: NonNegativeFloat = 0.0  # λ of the center loss; 0 = off
    # --- data -------------------------------------------------------------------------------
    data: str = "synthetic"  # folder, label.txt, train.rec or "synthetic" (see data.open_dataset)
    num_classes: PositiveInt | None = None  # None: read from the data set
    image_size: PositiveInt = 112  # side of the aligned crops (112 for every real face data set)
    synthetic_identities: Annotated[int, Field(ge=2)] = 16
    synthetic_images_per_identity: PositiveInt = 8
    num_workers: Annotated[int, Field(ge=0)] = 2  # data loader processes per rank
    flip: bool = True  # random horizontal flips
    # --- optimisation -----------------------------------------------------------------------
    batch_size: PositiveInt = 128  # per rank and micro-batch
    # Micro-batches summed into one optimizer step (arcface_torch's `gradient_acc`): the global
    # batch is batch_size x world size x gradient_accumulation; steps count optimizer steps.
    gradient_accumulation: PositiveInt = 1
    # The global batch the recipe's lr was tuned for (None: no check). When the run's global
    # batch differs, `lr_scaling` "linear" multiplies lr by global / recipe (Goyal et al. 2017,
    # "linear scaling rule"); "warn" keeps lr and prints a warning.
    recipe_global_batch: PositiveInt | None = None
    lr_scaling: Literal["linear", "warn"] = "linear"
    # May be fractional: a recipe's iteration count in epochs.
    epochs: Annotated[float, Field(gt=0)] = 20
    max_steps: PositiveInt | None = None  # stop earlier than `epochs` (smoke runs)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    lr_schedule: Literal["poly", "step"] = "poly"
    lr_power: NonNegativeFloat = 2.0  # poly: lr·(1 − progress)^power
    # step: epochs at which lr is multiplied by lr_gamma.
    lr_milestones: tuple[NonNegativeFloat, ...] = ()
    lr_gamma: Annotated[float, Field(gt=0)] = 0.1
    warmup_epochs: NonNegativeFloat = 0.0  # linear warm-up from 0
    grad_clip_norm: NonNegativeFloat | None = 5.0  # max gradient norm of the backbone; None/0 = off
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    seed: int = 0
    # --- divergence guard -------------------------------------------------------------------
    # A step whose loss or gradients are not finite is skipped (no update; under float16 the
    # gradient scaler lowers its scale). After `max_bad_steps` such steps in a row the run
    # stops ("stop") or reloads the weights of the last finite checkpoint and goes on with the
    # next batches ("rollback", at most 3 times).
    max_bad_steps: PositiveInt = 20
    on_divergence: Literal["stop", "rollback"] = "stop"
    # --- output and evaluation --------------------------------------------------------------
    output_dir: str = ""  # defaults to runs/<name>
    log_every: PositiveInt = 50  # steps between CSV/TensorBoard rows
    checkpoint_every: PositiveInt = 2000  # steps between checkpoints (and one at the end)
    keep_checkpoints: Annotated[int, Field(ge=0)] = 2  # older ones are deleted; 0 keeps all
    eval_sets: tuple[str, ...] = ()  # .bin files, "pairs.txt@images_dir" or "synthetic"
    eval_every: PositiveInt = 2000
    eval_flip: bool = True
    # Accuracy protocol: "insightface" (arcface_torch eval/verification.py: squared-L2
    # thresholds 0, 0.01 … 3.99), "exact" (best cosine midpoint), or "auto" (insightface for
    # .bin sets, exact for the others); see training.evaluate.
    eval_protocol: Literal["auto", "insightface", "exact"] = "auto"
    target_far: Annotated[float, Field(gt=0, lt=1)] = 1e-3  # FAR of the reported threshold
    # --- multi-GPU communication (DistributedDataParallel; ignored in a single process) -----
    # Opt-in, as arcface_torch offers them; see docs/training.md "Multi-GPU communication".
    # Gradients all-reduced in float16 (DDP's fp16_compress_hook): half the bytes on the wire,
    # for links that limit the step time (several nodes, PCIe without NVLink).
    ddp_fp16_compress: bool = False
    # Size of DDP's gradient buckets in MiB; None keeps PyTorch's default (25).
    ddp_bucket_cap_mb: Annotated[float, Field(gt=0)] | None = None
    # DDP static_graph: the set of parameters used each step never changes (true of every
    # backbone here), which lets DDP skip its per-step search for unused parameters.
    ddp_static_graph: bool = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from training.backbones import BACKBONES

        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}: use one of {', '.join(BACKBONES)}")
        return value

    @field_validator("head")
    @classmethod
    def _known_head(cls, value: str) -> str:
        from training.heads import HEADS

        if value not in HEADS:
            raise ValueError(f"unknown head {value!r}: use one of {', '.join(HEADS)}")
        return value

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def config_keys() -> list[str]:
    """The names a config accepts, in the order of `TrainConfig`."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def did_you_mean(key: str) -> str:
    """' (did you mean 'lr_schedule'?)' for a near miss among the config keys, else where
    to find them."""
    close = difflib.get_close_matches(key, config_keys(), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (no key like it: TrainConfig in training/config.py lists them)"


def describe_errors(error: ValidationError) -> list[str]:
    """One message per bad key of a failed `TrainConfig` validation."""
    lines = []
    for item in error.errors():
        location = [str(part) for part in item["loc"]]
        key = location[0] if location else "?"
        if item["type"] == "unexpected_keyword_argument":
            lines.append(f"unknown key {key!r}{did_you_mean(key)}")
            continue
        where = key + "".join(f"[{part}]" for part in location[1:])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}={item['input']!r}: {message}")
    return lines


def validated(source: str, build: Callable[[], Built]) -> Built:
    """`build()`, with a validation failure raised as one `ConfigError` naming `source`."""
    try:
        return build()
    except ValidationError as error:
        lines = describe_errors(error)
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def _parse_value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """A validated copy of `config` with `key=value` overrides (e.g. `max_steps=100`)."""
    names = set(config_keys())
    changes: dict[str, object] = {}
    problems = []
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator:
            problems.append(f"{override!r} is not key=value")
        elif key not in names:
            problems.append(f"unknown key {key!r}{did_you_mean(key)}")
        else:
            changes[key] = _parse_value(value)
    if problems:
        raise ConfigError("--set: " + "; ".join(problems))
    return validated("--set", lambda: dataclasses.replace(config, **changes))


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
    namespace = validated(str(config_path), lambda: runpy.run_path(str(config_path)))
    config = namespace.get("config")
    if not isinstance(config, TrainConfig):
        raise ValueError(f"{config_path} must define `config = TrainConfig(...)`")
    if not config.name:
        config = dataclasses.replace(config, name=config_path.stem)
    return apply_overrides(config, overrides or [])
