"""ONNX Runtime sessions with explicit execution providers and thread settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

# Setting name -> ONNX Runtime provider name.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class SessionConfig:
    """How every ONNX Runtime session of an engine is made."""

    # "cpu", "cuda", "tensorrt", or "auto" (the best available: tensorrt > cuda > cpu).
    provider: str = "cpu"
    # Intra-op threads per session. One thread with spinning off holds latency steady on a loaded CPU.
    intra_op_threads: int = 1
    # Inter-op threads per session (graphs here are sequential, so 1).
    inter_op_threads: int = 1
    # Whether idle ORT threads spin; off, so a robot computer's other processes get the cores.
    allow_spinning: bool = False
    # ORT graph optimisation level: "disable", "basic", "extended" or "all".
    optimization: str = "all"
    # TensorRT engine cache folder (TensorRT only); engines are built once per shape and reused.
    trt_cache_dir: str = ".cache/tensorrt"
    # TensorRT precision: build FP16 engines.
    trt_fp16: bool = False
    # CUDA device index (CUDA and TensorRT).
    device_id: int = 0

    def __post_init__(self):
        if self.provider not in (*PROVIDERS, "auto"):
            raise ValueError(f"provider: must be one of {', '.join([*PROVIDERS, 'auto'])}, got {self.provider!r}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("intra_op_threads/inter_op_threads: must be >= 0 (0 lets ONNX Runtime choose)")
        if self.optimization not in _OPT_LEVELS:
            raise ValueError(f"optimization: must be one of {', '.join(_OPT_LEVELS)}, got {self.optimization!r}")


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderError(RuntimeError):
    """The requested execution provider is not available in the installed onnxruntime."""


def resolve_provider(name: str) -> str:
    """Maps a provider setting to an available one; raises naming the provider if it is not installed."""
    available = ort.get_available_providers()
    if name == "auto":
        for candidate in ("tensorrt", "cuda", "cpu"):
            if PROVIDERS[candidate] in available:
                return candidate
    if PROVIDERS[name] not in available:
        raise ProviderError(
            f"provider: {name!r} ({PROVIDERS[name]}) is not available in this onnxruntime "
            f"(available: {', '.join(available)}); install the 'gpu' extra (onnxruntime-gpu) and CUDA"
        )
    return name


def make_session(path: Path | bytes, config: SessionConfig) -> ort.InferenceSession:
    """Loads one ONNX file (or a serialized graph) with the engine's provider and thread settings."""
    provider = resolve_provider(config.provider)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[config.optimization]
    spin = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    providers: list = []
    if provider == "tensorrt":
        Path(config.trt_cache_dir).mkdir(parents=True, exist_ok=True)
        providers.append((PROVIDERS["tensorrt"], {
            "device_id": config.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": config.trt_cache_dir,
            "trt_fp16_enable": config.trt_fp16,
        }))
    if provider in ("tensorrt", "cuda"):
        providers.append((PROVIDERS["cuda"], {"device_id": config.device_id}))
    providers.append(PROVIDERS["cpu"])
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), sess_options=options,
                                providers=providers)


def io_signature(session: ort.InferenceSession) -> tuple[dict, dict]:
    """{name: (shape, type)} for the inputs and outputs of a session."""
    ins = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    outs = {o.name: (o.shape, o.type) for o in session.get_outputs()}
    return ins, outs
