"""Runtime: ONNX Runtime sessions, the best-of-N engine, selection and timing (numpy + onnxruntime only)."""

from runtime.engine import Decision, Engine, EngineConfig
from runtime.sessions import SessionConfig

__all__ = ["Decision", "Engine", "EngineConfig", "SessionConfig"]
