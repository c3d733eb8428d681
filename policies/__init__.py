"""Policies: the bundle format, observations, preprocessing; torch models, training and export.

Importing this package needs numpy only; torch is imported by `policies.models` and `policies.export`.
"""

from policies.bundle import PolicyBundle, load_policy_bundle
from policies.errors import BundleError, ObservationError, SpecError
from policies.manifest import CameraSpec, Normalization, PolicyManifest
from policies.observation import Observation, make_example_observation
from policies.preprocess import Preprocessor

__all__ = [
    "BundleError",
    "CameraSpec",
    "Normalization",
    "Observation",
    "ObservationError",
    "PolicyBundle",
    "PolicyManifest",
    "Preprocessor",
    "SpecError",
    "load_policy_bundle",
    "make_example_observation",
]
