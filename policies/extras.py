"""The optional extras of the `taco-runtime` distribution: which modules each brings, and imports of
them with an error that names the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# Extra -> the top-level modules it installs (pyproject.toml's optional-dependencies).
EXTRA_MODULES = {
    "train": ("torch", "onnx", "onnxscript", "lerobot", "diffusers", "transformers"),
    "sim": ("mujoco", "gym_aloha", "matplotlib"),
    "ray": ("ray",),
    "ros": ("rclpy", "mcap", "mcap_ros2"),
    # The policy server and its client (openpi's websocket protocol).
    "serve": ("websockets", "msgpack"),
    # Bundles that ship a Hugging Face tokenizer (imported VLAs); the inference path needs nothing else.
    "vla": ("tokenizers",),
}
_EXTRA_OF = {module: extra for extra, modules in EXTRA_MODULES.items() for module in modules}


def install_hint(extra: str) -> str:
    return f"pip install -e '.[{extra}]'"


def require(module: str) -> ModuleType:
    """Imports `module`, or raises ImportError saying which extra provides it.

    Called by the modules behind extras (training, export, simulation, ROS), at the point of use,
    so that the inference path imports with numpy and onnxruntime alone.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRA_OF.get(module.split(".")[0], "all")
        raise ImportError(f"{module!r} is needed here but is not installed; install the '{extra}' extra: "
                          f"{install_hint(extra)}") from err


def missing_extras(extras: tuple[str, ...]) -> dict[str, str]:
    """Extra -> the first of its modules that is not installed, for each extra of `extras` that is missing.

    Looks the modules up without importing them, so listing commands stays fast on a core-only install.
    """
    missing = {}
    for extra in extras:
        absent = next((m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None), None)
        if absent is not None:
            missing[extra] = absent
    return missing
