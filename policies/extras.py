"""The optional extras of the `taco-runtime` distribution: which modules each brings, and imports of
them with an error that names the extra to install."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

# Extra -> the top-level modules it installs (pyproject.toml's optional-dependencies).
EXTRA_MODULES = {
    "train": ("torch", "onnxscript", "lerobot", "diffusers", "transformers"),
    # Writing verifier graphs (wrap, combine, consensus/random); the train extra brings it too.
    "verifiers": ("onnx",),
    "sim": ("mujoco", "gym_aloha", "matplotlib"),
    "ray": ("ray",),
    "ros": ("rclpy", "mcap", "mcap_ros2"),
    # The policy server and its client (openpi's websocket protocol).
    "serve": ("websockets", "msgpack"),
    # Bundles that ship a Hugging Face tokenizer (imported VLAs); the inference path needs nothing else.
    "vla": ("tokenizers",),
}
_EXTRA_OF = {module: extra for extra, modules in EXTRA_MODULES.items() for module in modules}
# Extras that need a newer Python than the robot side (3.10): lerobot 0.6 needs 3.12.
EXTRA_PYTHON = {"train": (3, 12)}


def install_hint(extra: str) -> str:
    if extra == "ros":  # a robot has its own ROS 2: a second rclpy from wheels beside it breaks things
        return ("on a robot, source its ROS 2 (source /opt/ros/humble/setup.bash or jazzy) and pip install -e "
                "'.[ros-system]'; without a ROS 2 install, pip install -e '.[ros]' (Jazzy wheels)")
    needs = EXTRA_PYTHON.get(extra)
    if needs and sys.version_info[:2] < needs:
        return (f"the '{extra}' extra needs Python {needs[0]}.{needs[1]} (this is {sys.version_info[0]}."
                f"{sys.version_info[1]}): install it in a Python {needs[0]}.{needs[1]} environment, "
                f"pip install -e '.[{extra}]'")
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
