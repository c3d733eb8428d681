"""`taco collect-features`: TACO's high-fidelity feature search over a finetuning dataset.

For each dataset frame the exported policy samples K candidates from K fixed noises (the same K for
every frame), and the feature of the candidate whose chunk is closest (L2, in normalised action units)
to the recorded chunk is kept: the feature of what the policy does when it reproduces the data.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.sampler import PolicySampler, SessionFactory, cpu_session


@dataclass(frozen=True)
class FeatureSet:
    # float32[M, F]: one feature per kept frame.
    features: np.ndarray
    # int64[M]: episode index and frame index of each feature.
    episode: np.ndarray
    frame: np.ndarray
    # float32[M]: L2 distance (normalised action units, per action) of the kept candidate to the data.
    distance: np.ndarray
    # int64[M]: which of the K noises was kept.
    noise_index: np.ndarray
    policy_fingerprint: str
    dataset_fingerprint: str
    k: int

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"policy_fingerprint": self.policy_fingerprint, "dataset_fingerprint": self.dataset_fingerprint,
                "k": self.k}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=self.features, episode=self.episode, frame=self.frame, distance=self.distance,
                 noise_index=self.noise_index, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["features"], z["episode"], z["frame"], z["distance"], z["noise_index"],
                       meta["policy_fingerprint"], meta["dataset_fingerprint"], meta["k"])


def collect_features(policy: str | Path, dataset: str | Path, k: int = 16, stride: int = 1, seed: int = 0,
                     progress=None, session_factory: SessionFactory | None = None, threads: int = 1) -> FeatureSet:
    """Runs the search over every `stride`-th frame of every episode.

    The policy runs as a bare `PolicySampler` (on the CPU with `threads` intra-op threads unless
    `session_factory` says otherwise): the search needs the candidates for fixed noises, not the serving
    engine's selection.
    """
    from policies.data import load_dataset

    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    sampler = PolicySampler(policy, session_factory or functools.partial(cpu_session, threads=threads))
    m = sampler.manifest
    data = load_dataset(dataset)
    for cam in m.cameras:
        have = next((c for c in data.cameras if c.name == cam.name), None)
        if have is None:
            raise ValueError(f"dataset: has no camera {cam.name!r} that the policy takes")
    # The K fixed noises (and a policy's per-step noise), shared by every frame.
    noise, step_noise = sampler.draw(k, seed)
    history = m.history
    h = m.chunk_length
    out = {key: [] for key in ("features", "episode", "frame", "distance", "noise_index")}
    total = sum(len(range(0, len(e), stride)) for e in data.episodes)
    done, started = 0, time.perf_counter()
    for ep in data.episodes:
        for t in range(0, len(ep), stride):
            # A policy with history sees the frames before t too (the first one repeated at the start, as
            # LeRobot pads an episode's first frames).
            frames = [ep.observation(max(t - back, 0), m.cameras) for back in range(history - 1, -1, -1)]
            chunks, features = sampler.candidates(frames, noise, step_noise)
            target = (ep.chunk(t, h) - sampler.action_mean) / sampler.action_std
            dist = np.sqrt(((chunks - target) ** 2).sum(axis=2)).mean(axis=1)
            best = int(np.argmin(dist))
            out["features"].append(features[best])
            out["episode"].append(ep.index)
            out["frame"].append(t)
            out["distance"].append(dist[best])
            out["noise_index"].append(best)
            done += 1
            if done % 500 == 0 or done == total:
                rate = done / (time.perf_counter() - started)
                progress(f"collected {done}/{total} frames ({rate:.0f}/s, eta {(total - done) / rate / 60:.1f} min); "
                         f"mean best distance {np.mean(out['distance']):.3f}")
    return FeatureSet(np.asarray(out["features"], np.float32), np.asarray(out["episode"], np.int64),
                      np.asarray(out["frame"], np.int64), np.asarray(out["distance"], np.float32),
                      np.asarray(out["noise_index"], np.int64), sampler.bundle.fingerprint, data.fingerprint, k)
