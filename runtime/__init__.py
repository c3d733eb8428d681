"""Runtime: ONNX Runtime sessions, the best-of-N engine, selection, timing and the failure monitor (numpy +
onnxruntime only)."""

from runtime.engine import BatchItem, Decision, Engine, EngineConfig
from runtime.monitor import Monitor, MonitorStatus, MonitorTrack, load_monitor
from runtime.sessions import SessionConfig

__all__ = ["BatchItem", "Decision", "Engine", "EngineConfig", "Monitor", "MonitorStatus", "MonitorTrack",
           "SessionConfig", "load_monitor"]
