"""onnxruntime sessions, created in one place so provider choice and threads are uniform.

Asking onnxruntime for CUDA on a machine without a usable CUDA silently falls back to CPU, so
the provider actually in use is read back from the session and logged.

OpenVINO (`onnxruntime-openvino`, a build of onnxruntime that replaces the plain one) is given
the intra-op thread count (its own default is 8 threads whatever the slots) and `ACCURACY`
precision, so a CPU with bf16 units (AMX) runs the models at their own FP32 precision rather
than OpenVINO's faster, less exact default there; `bench/execution_providers.py` checks it
against the CPU provider on real photos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
_SHORT_NAMES = {
    "cuda": CUDA,
    "cpu": CPU,
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": OPENVINO,
}
# `FACEVERIFY_GRAPH_OPTIMIZATION` values; `all` is onnxruntime's own default.
GRAPH_OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run ONNX models: provider preference, thread counts (0 = onnxruntime's) and
    graph optimisation level (a key of `GRAPH_OPTIMIZATION_LEVELS`)."""

    providers: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"


def resolve_providers(spec: str) -> list[str]:
    """Turn `auto`, `cuda,cpu` or full provider names into an onnxruntime provider list."""
    available = ort.get_available_providers()
    if spec.strip().lower() == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    wanted = [_SHORT_NAMES.get(p.strip().lower(), p.strip()) for p in spec.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in available]
    if unknown:
        log.warning(
            "onnxruntime providers %s are not available in this build (available: %s); "
            "install onnxruntime-gpu for CUDA, onnxruntime-openvino for OpenVINO",
            unknown,
            available,
        )
    chosen = [p for p in wanted if p in available]
    return chosen or [CPU]


def provider_entries(providers: list[str], options: RuntimeOptions) -> list[str | tuple]:
    """The `providers` argument of an onnxruntime session: names, with options where ours
    differ from the provider's defaults (see the module docstring)."""
    entries: list[str | tuple] = []
    for name in providers:
        if name == OPENVINO:
            settings = {"device_type": "CPU", "precision": "ACCURACY"}
            if options.intra_op_threads > 0:
                settings["num_of_threads"] = str(options.intra_op_threads)
            entries.append((name, settings))
        else:
            entries.append(name)
    return entries


def create_session(path: Path, options: RuntimeOptions) -> ort.InferenceSession:
    """Open one ONNX model; logs the provider onnxruntime really uses."""
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    session_options.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization]
    session_options.log_severity_level = 3  # errors only: CUDA fallback is reported below
    providers = resolve_providers(options.providers)
    session = ort.InferenceSession(
        str(path), sess_options=session_options, providers=provider_entries(providers, options)
    )
    active = session.get_providers()[0]
    if providers[0] != active:
        log.warning("%s: asked for %s but onnxruntime runs it on %s", path.name, providers, active)
    log.info("%s: running on %s", path.name, active)
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The provider onnxruntime runs the session on first (e.g. CUDAExecutionProvider)."""
    return session.get_providers()[0]
