"""A failure monitor of the tiny flow policy, calibrated on familiar observations (tests of the engine, the
server and the ROS node share it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from policies import Observation, make_example_observation
from policies.schema import sha256_file
from runtime import Engine, EngineConfig
from runtime.calibration import CalibrationEpisode, fit_monitor
from runtime.monitor import EMBEDDING_FILE, MonitorManifest, fit_embedding, novelty

# Candidates per decision the tiny monitor is calibrated for.
N = 4


def familiar(manifest, rng, stamp: float) -> Observation:
    """One of three images, the state near its training mean: what the monitor was calibrated on."""
    base = make_example_observation(manifest, seed=int(rng.integers(3)), image_size=(32, 32))
    state = (np.asarray(manifest.normalization.state_mean, np.float32)
             + 0.1 * rng.standard_normal(manifest.state_dim).astype(np.float32)
             * np.asarray(manifest.normalization.state_std, np.float32))
    return dataclasses.replace(base, state=state, stamp=stamp)


def strange(manifest, stamp: float) -> Observation:
    """A black frame and every joint 8 standard deviations from its mean: nothing like the calibration."""
    base = make_example_observation(manifest, seed=11, image_size=(32, 32))
    state = (np.asarray(manifest.normalization.state_mean, np.float32)
             + 8.0 * np.asarray(manifest.normalization.state_std, np.float32))
    return dataclasses.replace(base, images={k: np.zeros_like(v) for k, v in base.images.items()}, state=state,
                               stamp=stamp)


def write_manifest(path: Path, manifest: MonitorManifest) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))


def run(engine, observations, seed: int = 0):
    """A fresh MonitorTrack fed one decision per observation."""
    track = engine.monitor.track(engine.manifest.action_dt)
    for i, obs in enumerate(observations):
        track.update(engine.infer(obs, n=N, seed=seed * 100 + i))
    return track


def make_tiny_monitor(flow, root: Path) -> Path:
    """`root/tiny-monitor`: N=4, a kNN pseudo-count of 60 familiar observations' features, an embedding
    model of their encoder prefixes and the sampler's velocity roughness, calibrated on 40 familiar episodes
    of 6 decisions."""
    from verifiers import write_verifier_bundle
    from verifiers.synthetic import knn_verifier_onnx

    rng = np.random.default_rng(1)
    keep = Engine(flow.path, config=EngineConfig(return_candidates=True))
    m = keep.manifest
    features = np.concatenate([keep.infer(familiar(m, rng, 0.0), n=N, seed=i).features for i in range(60)])
    mean, std = features.mean(0), features.std(0) + 1e-6
    knn = knn_verifier_onnx(root / "knn.onnx", (features - mean) / std, mean, std, k=5)
    monitor = root / "tiny-monitor"
    monitor.mkdir()
    write_verifier_bundle(knn, monitor / "pseudocount", policy_fingerprint=flow.bundle.fingerprint,
                          feature_dim=m.feature_dim)
    base = MonitorManifest(name="tiny-monitor", policy_fingerprint=flow.bundle.fingerprint, n=N, verifier=None,
                           scorers={"pseudocount": "pseudocount"},
                           scorer_manifests={"pseudocount": sha256_file(monitor / "pseudocount" / "manifest.json")},
                           record_embeddings=True, accel=True, accel_window=8)
    write_manifest(monitor, base)
    engine = Engine(flow.path, monitor=monitor)
    tracks = [run(engine, [familiar(m, rng, i * 8 * m.action_dt) for i in range(6)], seed=1000 + k) for k in range(40)]
    # The embedding model of the first half's observations, as taco calibrate-monitor fits it.
    model = fit_embedding(np.concatenate([t.embeddings for t in tracks[0::2]]), components=8)
    np.savez(monitor / EMBEDDING_FILE, **model)
    episodes = [CalibrationEpisode(signals={**t.history, "novelty": [novelty(model, e) for e in t.embeddings]},
                                   success=True, decision_steps=list(range(0, 48, 8))) for t in tracks]
    final = dataclasses.replace(base, record_embeddings=False, embedding={
        "file": EMBEDDING_FILE, "sha256": sha256_file(monitor / EMBEDDING_FILE), "components": 8})
    fit = fit_monitor(episodes, final.signals, alpha=0.1)
    write_manifest(monitor, dataclasses.replace(final, standardisation=fit.standardisation, detectors=fit.detectors,
                                                main=fit.main))
    return monitor
