"""DDP's opt-in communication settings: wired into DistributedDataParallel as configured, and a
two-process Gloo run under torchrun trains with all of them at once (gradient accumulation
included, which DDP's static_graph refuses unless its first iteration is synchronised)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from training.checkpoint import list_checkpoints
from training.config import TrainConfig
from training.distributed import DdpCommunication, DistributedContext, data_parallel

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    """A one-process Gloo group (DDP needs one), left as it was found."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def ddp_settings(model: nn.Module) -> dict[str, object]:
    return {
        "comm_hook": model._get_ddp_logging_data().get("comm_hook"),
        "bucket_cap_bytes": model.bucket_bytes_cap,
        "static_graph": model.static_graph,
    }


@pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning")
def test_ddp_communication_settings_reach_distributed_data_parallel(process_group: None) -> None:
    chosen = DdpCommunication(fp16_compress=True, bucket_cap_mb=2.0, static_graph=True)
    model = data_parallel(nn.Linear(4, 2), DistributedContext(), chosen)
    assert ddp_settings(model) == {
        "comm_hook": "fp16_compress_hook",
        "bucket_cap_bytes": 2 * 2**20,
        "static_graph": True,
    }


@pytest.mark.filterwarnings("ignore:`broadcast_buffers` is deprecated:FutureWarning")
def test_ddp_defaults_keep_pytorchs_settings(process_group: None) -> None:
    model = data_parallel(nn.Linear(4, 2), DistributedContext(), DdpCommunication())
    assert ddp_settings(model) == {
        "comm_hook": None,
        "bucket_cap_bytes": 25 * 2**20,
        "static_graph": False,
    }


def test_ddp_settings_are_opt_in_config_keys() -> None:
    config = TrainConfig()
    assert (config.ddp_fp16_compress, config.ddp_bucket_cap_mb, config.ddp_static_graph) == (
        False,
        None,
        False,
    )


@pytest.mark.slow
def test_torchrun_trains_with_every_ddp_communication_setting(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training", "train", "--config", "synthetic_smoke", "--device", "cpu",
        "--output-dir", str(tmp_path), "--set", "image_size=32", "--set", "max_steps=2",
        "--set", "batch_size=8", "--set", "eval_sets=()", "--set", "gradient_accumulation=2",
        "--set", "ddp_fp16_compress=True", "--set", "ddp_bucket_cap_mb=1",
        "--set", "ddp_static_graph=True",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=240
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert list_checkpoints(tmp_path) and (tmp_path / "model.pt").is_file()
