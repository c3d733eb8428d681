"""Imports of optional heavy packages, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

# Which extra of the `taco-runtime` distribution installs each optional module.
_EXTRA_OF = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "lerobot": "train",
    "mujoco": "sim",
    "rclpy": "ros",
}


def require(module: str) -> ModuleType:
    """Imports `module`, or raises ImportError saying which extra provides it.

    Called by the modules behind extras (training, export, simulation, ROS), at the point of use,
    so that the inference path imports with numpy and onnxruntime alone.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = _EXTRA_OF.get(top, "all")
        raise ImportError(
            f"{module!r} is needed here but is not installed; "
            f"install the '{extra}' extra: pip install -e '.[{extra}]' (or `make install-{extra}`)"
        ) from err
