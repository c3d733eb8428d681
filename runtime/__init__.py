"""Runtime: ONNX Runtime sessions, the best-of-N engine, selection and timing (numpy + onnxruntime only)."""

from runtime.engine import BatchItem, Decision, Engine, EngineConfig
from runtime.sessions import SessionConfig

__all__ = ["BatchItem", "Decision", "Engine", "EngineConfig", "SessionConfig"]
