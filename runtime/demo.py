"""`taco demo`: the engine end to end on an example bundle, printing the decision and its timings.

Until trained default bundles ship, the example policy is a freshly exported, randomly initialised one
and the verifier an untrained CFN-shaped network: the demo shows the data path and its cost, not
TACO's selection quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies import BundleError, load_policy_bundle, make_example_observation
from runtime.engine import Engine, EngineConfig


def _example_bundles(out: Path, size: str, seed: int):
    policy_dir, verifier_dir = out / f"flow-{size}", out / f"verifier-{size}"
    try:
        bundle = load_policy_bundle(policy_dir)
        print(f"using example policy bundle {policy_dir}")
    except BundleError:
        from policies.config import make_config
        from policies.export import export_bundle
        from policies.models import build_policy

        print(f"exporting an example {size} flow policy (random weights, seed {seed}) to {policy_dir}")
        out.mkdir(parents=True, exist_ok=True)
        bundle = export_bundle(build_policy(make_config(size, "flow"), seed=seed), policy_dir, overwrite=True,
                               provenance={"weights": f"random init, seed {seed} (untrained example)"})
    from verifiers import write_verifier_bundle
    from verifiers.synthetic import mlp_verifier_onnx

    onnx_path = mlp_verifier_onnx(out / "example_verifier.onnx", bundle.manifest.feature_dim, seed=seed)
    write_verifier_bundle(onnx_path, verifier_dir, policy_fingerprint=bundle.fingerprint,
                          feature_dim=bundle.manifest.feature_dim, type="example-untrained", overwrite=True,
                          name="example (untrained CFN-shaped)")
    return bundle, verifier_dir


def _print_decision(title: str, decision) -> None:
    print(f"\n{title}")
    print(f"  chosen candidate  {decision.index} of {decision.n} (seed {decision.seed}, verifier {decision.verifier})")
    if decision.scores is not None:
        order = np.argsort(-decision.scores)
        top = ", ".join(f"#{i}: {decision.scores[i]:.2f}" for i in order[:5])
        print(f"  scores            best five {top}")
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(f"  chunk             {decision.chunk.shape[0]} actions x {decision.chunk.shape[1]} joints, "
          f"for t = {decision.times[0]:.2f} .. {decision.times[-1]:.2f} s")
    print(f"  first action      {decision.chunk[0]}")
    stages = "  ".join(f"{k} {v:.2f}" for k, v in decision.timings.items())
    print(f"  timings (ms)      {stages}")


def run_demo(out: Path, n: int = 16, quick: bool = False, seed: int = 0) -> int:
    size = "tiny" if quick else "default"
    bundle, verifier_dir = _example_bundles(Path(out), size, seed)
    engine = Engine(bundle, config=EngineConfig(return_candidates=True))
    # A robot sends 480x640 images; the engine resizes them to the manifest's size.
    observation = make_example_observation(bundle.manifest, seed=seed, image_size=(480, 640))
    observation.stamp = 100.0
    for _ in range(3):  # warm-up: first runs allocate
        engine.infer(observation, n, seed=seed)
    _print_decision("N=1, no verifier (the policy's own sample)", engine.infer(observation, 1, seed=seed))
    engine.set_verifier(verifier_dir)
    decision = engine.infer(observation, n, seed=seed)
    _print_decision(f"N={n}, verifier {engine.verifier.name}", decision)
    rounds = 5 if quick else 20
    totals = sorted(engine.infer(observation, n, seed=seed + i).timings["total"] for i in range(rounds))
    print(f"\nmedian step latency over {rounds} steps at N={n}: {totals[len(totals) // 2]:.2f} ms "
          f"(CPU, one intra-op thread)")
    return 0
