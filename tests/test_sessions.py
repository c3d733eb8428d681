import onnxruntime as ort
import pytest

from runtime.sessions import SessionConfig, make_session, resolve_provider


def test_unknown_provider_setting_is_rejected():
    with pytest.raises(ValueError, match="provider"):
        SessionConfig(provider="vulkan")


def test_cpu_is_always_available_and_auto_takes_the_fastest_installed(monkeypatch):
    assert resolve_provider("cpu") == "cpu"
    import runtime.sessions as sessions

    for installed, expected in ((["CPUExecutionProvider"], "cpu"),
                                (["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"),
                                (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "tensorrt"),
                                (["CPUExecutionProvider", "TensorrtExecutionProvider"], "tensorrt")):
        monkeypatch.setattr(sessions.ort, "get_available_providers", lambda installed=installed: installed)
        assert resolve_provider("auto") == expected, installed


@pytest.mark.parametrize("name,provider", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_gpu_provider_is_used_when_present_and_named_when_absent(flow, name, provider):
    config = SessionConfig(provider=name)
    if provider in ort.get_available_providers():
        session = make_session(flow.path / "encoder.onnx", config)
        assert session.get_providers()[0] == provider
    else:
        with pytest.raises(RuntimeError, match=provider):
            make_session(flow.path / "encoder.onnx", config)


def test_thread_settings_are_applied(flow):
    session = make_session(flow.path / "encoder.onnx", SessionConfig(intra_op_threads=1))
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
