"""Verifiers: score candidate action chunks from the policy's per-candidate features.

Inference needs numpy and onnxruntime only; training modules import torch.
"""

from verifiers.base import Verifier
from verifiers.bundle import OnnxVerifier, VerifierManifest, check_verifier, load_verifier, write_verifier_bundle

__all__ = ["OnnxVerifier", "Verifier", "VerifierManifest", "check_verifier", "load_verifier", "write_verifier_bundle"]
