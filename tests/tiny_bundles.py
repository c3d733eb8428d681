"""The tiny policy bundles the tests run on: exported here with torch, or, on a robot-side install (no
torch: the Python 3.10 run of `make test`), read back from the folder `TACO_TEST_BUNDLES` names, which
`python tests/tiny_bundles.py DIR` fills from a full install first.

    python tests/tiny_bundles.py build/test-bundles    # every kind x sampler the tests use, tiny size
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from policies import Normalization

ENV = "TACO_TEST_BUNDLES"
# What a robot-side run can ask for: every (kind, sampler) at the tiny size.
KINDS, SAMPLERS, SIZE = ("flow", "diffusion"), ("unrolled", "stepped"), "tiny"


def nontrivial_normalization(cfg, seed: int = 0) -> Normalization:
    """Statistics far from identity, so tests catch a missing normalise or unnormalise."""
    rng = np.random.default_rng(seed)
    s, a = len(cfg.state_names), len(cfg.action_names)
    return Normalization(
        state_mean=tuple(rng.uniform(-1, 1, s)), state_std=tuple(rng.uniform(0.2, 2.0, s)),
        action_mean=tuple(rng.uniform(-1, 1, a)), action_std=tuple(rng.uniform(0.2, 2.0, a)),
        image_mean=(0.4, 0.45, 0.5), image_std=(0.25, 0.2, 0.3),
    )


class Exported:
    """A policy bundle and the normalization it was exported with; `policy` is the torch model, or None
    when the bundle was read back on an install without torch."""

    def __init__(self, policy, bundle, normalization):
        self.policy, self.bundle, self.normalization = policy, bundle, normalization

    @property
    def path(self):
        return self.bundle.path


def have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def export_policy(out: Path, kind: str, sampler: str = "unrolled", size: str = SIZE, seed: int = 0) -> Exported:
    from policies.config import make_config
    from policies.export import export_bundle
    from policies.models import build_policy

    cfg = make_config(size, kind)
    policy = build_policy(cfg, seed=seed)
    norm = nontrivial_normalization(cfg, seed)
    return Exported(policy, export_bundle(policy, out, normalization=norm, sampler=sampler, overwrite=True), norm)


def bundle_name(kind: str, sampler: str, size: str) -> str:
    return f"{kind}-{size}-{sampler}"


def read_back(kind: str, sampler: str = "unrolled", size: str = SIZE) -> Exported:
    """The bundle exported into $TACO_TEST_BUNDLES, for an install without torch."""
    from policies import load_policy_bundle

    folder = os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"torch is not installed, so the tests' tiny bundles cannot be exported here: set {ENV} "
                           "to a folder filled by `python tests/tiny_bundles.py DIR` on a full install")
    path = Path(folder).resolve() / bundle_name(kind, sampler, size)
    if not (path / "manifest.json").is_file():
        raise RuntimeError(f"{path} is missing: `python tests/tiny_bundles.py {folder}` exports "
                           f"{', '.join(bundle_name(k, s, SIZE) for k in KINDS for s in SAMPLERS)}")
    bundle = load_policy_bundle(path)
    norm = bundle.manifest.normalization
    return Exported(None, bundle, norm)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    for kind in KINDS:
        for sampler in SAMPLERS:
            path = out / bundle_name(kind, sampler, SIZE)
            export_policy(path, kind, sampler)
            print(f"exported {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main(sys.argv[1:]))
