"""`taco bench`: per-stage latency of the runtime against a naive PyTorch baseline, side by side.

The naive baseline does what TACO's reference release does: PyTorch eager, the observation replicated
N times, the prefix encoded N times (one batch of N), then N candidates sampled, each against its own
prefix copy. For a bundle imported from LeRobot (`--lerobot CHECKPOINT`), the baselines are LeRobot's own
inference (preprocessor -> predict_action_chunk -> postprocessor): called N times, as a user does today,
and once with the observation repeated N times in one batch (TACO's release). All run in this process,
interleaved round by round, so machine noise hits them alike.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies import load_policy_bundle, make_example_observation
from policies.config import PolicyConfig
from policies.flops import candidate_flops, encoder_flops
from policies.pruning import DEFAULT_PRUNE, Prune
from runtime.engine import Engine, EngineConfig
from runtime.sessions import SessionConfig
from verifiers.base import score_candidates

STAGES = ("preprocess", "encode", "sample", "prune", "finish", "score", "select", "total")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run."""

    # Candidate counts to measure.
    ns: tuple[int, ...] = (1, 4, 16, 64)
    # Timed rounds per configuration (after `warmup` untimed rounds).
    iters: int = 50
    warmup: int = 5
    # Policy bundle to measure; None builds and exports a fresh model of `kind` and `size`.
    bundle: str | None = None
    kind: str = "flow"
    size: str = "default"
    # ONNX Runtime settings of the runtime rows.
    provider: str = "cpu"
    threads: int = 1
    # Run the PyTorch eager baseline (needs torch and the model's weights).
    naive: bool = True
    # The LeRobot checkpoint a `bundle` was imported from: LeRobot's own inference as the baselines.
    lerobot: str | None = None
    # Its tokenizer folder (pi0/pi05) or VLM folder (SmolVLA), as given to `taco import lerobot`.
    tokenizer: str | None = None
    # Hidden width of the CFN-shaped benchmark verifier.
    verifier_hidden: int = 256
    # Pruned settings measured with the verifier ("k:m", policies.pruning; flow policies only), the first
    # one giving the summary's `ratio_n16_pruned_over_n1`.
    prunes: tuple[str, ...] = (str(DEFAULT_PRUNE),)
    seed: int = 0
    notes: list = field(default_factory=list)

    def __post_init__(self):
        if self.lerobot is not None and self.bundle is None:
            raise ValueError("lerobot: give the bundle imported from that checkpoint too (--bundle)")
        if not self.ns or any(n < 1 for n in self.ns):
            raise ValueError(f"ns: candidate counts must be >= 1, got {self.ns}")
        if self.iters < 1 or self.warmup < 0:
            raise ValueError("iters must be >= 1 and warmup >= 0")
        object.__setattr__(self, "prunes", tuple(str(Prune.parse(p)) for p in self.prunes))


def _percentiles(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


class _Naive:
    """TACO-reference-style inference in PyTorch eager, one step at a time."""

    def __init__(self, policy, engine: Engine, verifier):
        import torch

        self.torch, self.policy, self.engine, self.verifier = torch, policy, engine, verifier
        self.cams = engine.manifest.camera_names

    def __call__(self, observation, n: int, seed: int) -> dict[str, float]:
        torch = self.torch
        ms = {}
        t0 = time.perf_counter()
        feeds = self.engine.policy.preprocess(observation)
        images = [torch.from_numpy(feeds[f"image_{c}"]).repeat(n, 1, 1, 1) for c in self.cams]
        state = torch.from_numpy(feeds["state"]).repeat(n, 1)
        tokens = torch.from_numpy(feeds["tokens"]).repeat(n, 1)
        t1 = time.perf_counter()
        with torch.inference_mode():
            prefix_kv, prefix_bias = self.policy.encode(images, state, tokens)
            t2 = time.perf_counter()
            noise = torch.from_numpy(self.engine.policy.noise(n, seed))
            chunks, features = self.policy.sample(prefix_kv, prefix_bias, noise)
            t3 = time.perf_counter()
            features_np = features.numpy()
        scores = None if self.verifier is None else score_candidates(self.verifier, features_np, chunks.numpy(), seed)
        t4 = time.perf_counter()
        index = int(np.argmax(scores)) if scores is not None else 0
        _ = chunks[index].numpy()
        t5 = time.perf_counter()
        ms.update(preprocess=(t1 - t0) * 1e3, encode=(t2 - t1) * 1e3, sample=(t3 - t2) * 1e3,
                  score=(t4 - t3) * 1e3, select=(t5 - t4) * 1e3, total=(t5 - t0) * 1e3)
        return ms


class _LeRobot:
    """LeRobot's own inference on the checkpoint a bundle was imported from: its preprocessor,
    `predict_action_chunk(batch, noise=...)` and postprocessor, on the observation the engine gets."""

    def __init__(self, checkpoint: str, tokenizer: str | None, manifest):
        import torch
        from lerobot.policies.factory import make_pre_post_processors

        from policies.lerobot import build_policy, read_checkpoint

        ck = read_checkpoint(checkpoint)
        self.torch, self.manifest = torch, manifest
        self.policy = build_policy(ck, vlm=tokenizer if ck.type == "smolvla" else None)
        overrides = {"tokenizer_processor": {"tokenizer_name": str(tokenizer)}} \
            if tokenizer and ck.type in ("pi0", "pi05") else {}
        self.pre, self.post = make_pre_post_processors(self.policy.config, pretrained_path=str(checkpoint),
                                                       preprocessor_overrides=overrides)

    def _batch(self, observation, n: int) -> dict:
        torch = self.torch
        t = self.manifest.history
        batch = {}
        for cam in self.manifest.cameras:
            image = torch.from_numpy(observation.images[cam.name]).permute(2, 0, 1).float() / 255
            batch[f"observation.images.{cam.name}"] = image.expand(n, t, *image.shape) if t > 1 else \
                image.expand(n, *image.shape)
        state = torch.from_numpy(np.asarray(observation.state, np.float32))
        batch["observation.state"] = state.expand(n, t, *state.shape) if t > 1 else state.expand(n, *state.shape)
        batch["task"] = [observation.task] * n
        return batch

    def __call__(self, observation, n: int, seed: int, together: bool) -> dict[str, float]:
        torch = self.torch
        noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(
            (n, *self.manifest.noise_dims)).astype(np.float32))
        started = time.perf_counter()
        with torch.inference_mode():
            if together:
                self.policy.reset()
                self.post(self.policy.predict_action_chunk(self.pre(self._batch(observation, n)), noise=noise))
            else:
                for i in range(n):
                    self.policy.reset()
                    self.post(self.policy.predict_action_chunk(self.pre(self._batch(observation, 1)),
                                                               noise=noise[i:i + 1]))
        return {"total": (time.perf_counter() - started) * 1e3}


def run_bench(config: BenchConfig, progress=print) -> dict:
    """Measures every configuration and returns the JSON-ready report (rows + summary)."""
    notes = list(config.notes)
    workdir = Path(tempfile.mkdtemp(prefix="taco-bench-"))
    policy = None
    if config.bundle is None:
        from policies.config import make_config
        from policies.export import export_bundle
        from policies.models import build_policy

        cfg = make_config(config.size, config.kind)
        policy = build_policy(cfg, seed=config.seed)
        bundle = export_bundle(policy, workdir / f"{config.kind}-{config.size}", name=f"bench-{config.kind}-{config.size}")
        progress(f"exported a fresh {config.size} {config.kind} policy to {bundle.path}")
    else:
        from policies.shipped import resolve_bundle

        bundle = load_policy_bundle(resolve_bundle(config.bundle))
        ours = bundle.manifest.model_config and not bundle.manifest.source
        cfg = PolicyConfig.from_dict(bundle.manifest.model_config) if ours else None
        if config.naive and config.lerobot is None:
            notes.append("naive baseline skipped: a bundle holds ONNX graphs only, not the torch weights")
    from verifiers.bundle import write_verifier_bundle
    from verifiers.synthetic import mlp_verifier_onnx

    verifier_onnx = mlp_verifier_onnx(workdir / "bench_verifier.onnx", bundle.manifest.feature_dim,
                                      hidden=config.verifier_hidden, seed=config.seed)
    verifier_path = workdir / "bench-verifier"
    write_verifier_bundle(verifier_onnx, verifier_path, policy_fingerprint=bundle.fingerprint,
                          feature_dim=bundle.manifest.feature_dim, type="synthetic-cfn-shaped")
    session = SessionConfig(provider=config.provider, intra_op_threads=config.threads)
    plain = Engine(bundle, config=EngineConfig(session=session))
    verified = Engine(bundle, verifier=verifier_path, config=EngineConfig(session=session))
    # A robot's 480x640 frames; LeRobot takes the dataset's size, so then both get that.
    size = None if config.lerobot else (480, 640)
    observation = make_example_observation(bundle.manifest, seed=config.seed, image_size=size)

    runners = {}
    for n in config.ns:
        runners[("runtime", n, False)] = lambda n=n: plain.infer(observation, n, seed=config.seed).timings
        runners[("runtime", n, True)] = lambda n=n: verified.infer(observation, n, seed=config.seed).timings
    prunes = config.prunes if bundle.manifest.kind == "flow" and not bundle.manifest.step_noise else ()
    if config.prunes and not prunes:
        notes.append(f"pruned rows skipped: pruning needs a deterministic flow sampler, this is {bundle.manifest.kind}")
    for setting in prunes:
        pruned = Engine(bundle, verifier=verified.verifier,
                        config=EngineConfig(session=session, prune=Prune.parse(setting)))
        for n in config.ns:
            if n > pruned.config.prune.keep:
                runners[(f"pruned {setting}", n, True)] = \
                    lambda n=n, e=pruned: e.infer(observation, n, seed=config.seed).timings
    if policy is not None and config.naive:
        import torch

        torch.set_num_threads(config.threads)
        naive = _Naive(policy, plain, verified.verifier)
        for n in config.ns:
            runners[("naive", n, True)] = lambda n=n: naive(observation, n, config.seed)

    if config.lerobot is not None:
        import torch

        torch.set_num_threads(config.threads)
        lerobot = _LeRobot(config.lerobot, config.tokenizer, bundle.manifest)
        for n in config.ns:
            runners[("lerobot-calls", n, False)] = lambda n=n: lerobot(observation, n, config.seed, together=False)
            runners[("lerobot-batch", n, False)] = lambda n=n: lerobot(observation, n, config.seed, together=True)
        progress(f"LeRobot baseline: {config.lerobot}")

    samples: dict[tuple, dict[str, list[float]]] = {key: {s: [] for s in STAGES} for key in runners}
    for _ in range(config.warmup):
        for run in runners.values():
            run()
    started = time.perf_counter()
    for i in range(config.iters):
        for key, run in runners.items():
            timings = run()
            for s in STAGES:
                samples[key][s].append(timings.get(s, 0.0))
        if (i + 1) % max(1, config.iters // 5) == 0:
            progress(f"  round {i + 1}/{config.iters} ({time.perf_counter() - started:.0f} s)")

    rows = []
    for (impl, n, with_verifier), stages in samples.items():
        rows.append({"impl": impl, "n": n, "verifier": with_verifier,
                     **{s: _percentiles(v) for s, v in stages.items()}})

    def p50(impl, n, v):
        for r in rows:
            if (r["impl"], r["n"], r["verifier"]) == (impl, n, v):
                return r["total"]["p50"]
        return None

    summary = {
        "ratio_n16_over_n1": None,
        "speedup_over_naive_n16": None,
    }
    if 16 in config.ns and 1 in config.ns:
        summary["ratio_n16_over_n1"] = p50("runtime", 16, True) / p50("runtime", 1, False)
        if prunes:
            summary["prune"] = prunes[0]
            summary["ratio_n16_pruned_over_n1"] = p50(f"pruned {prunes[0]}", 16, True) / p50("runtime", 1, False)
            summary["ratio_n16_pruned_over_full"] = p50(f"pruned {prunes[0]}", 16, True) / p50("runtime", 16, True)
    if 16 in config.ns and p50("naive", 16, True) is not None:
        summary["speedup_over_naive_n16"] = p50("naive", 16, True) / p50("runtime", 16, True)
    if 16 in config.ns and p50("lerobot-calls", 16, False) is not None:
        summary["speedup_over_lerobot_calls_n16"] = p50("lerobot-calls", 16, False) / p50("runtime", 16, False)
        summary["speedup_over_lerobot_batch_n16"] = p50("lerobot-batch", 16, False) / p50("runtime", 16, False)
        summary["runtime_ratio_n16_over_n1"] = p50("runtime", 16, False) / p50("runtime", 1, False)
    if cfg is not None:
        enc_f, cand_f = encoder_flops(cfg), candidate_flops(cfg)
        summary["encoder_mflops"] = enc_f / 1e6
        summary["candidate_mflops"] = cand_f / 1e6
        summary["candidate_mflops_per_step"] = cand_f / cfg.num_steps / 1e6
        n_max = max(config.ns)
        sample_ms = next(r["sample"]["p50"] for r in rows if (r["impl"], r["n"], r["verifier"]) == ("runtime", n_max, False))
        encode_ms = next(r["encode"]["p50"] for r in rows if (r["impl"], r["n"], r["verifier"]) == ("runtime", n_max, False))
        summary[f"sample_gflops_per_s_n{n_max}"] = n_max * cand_f / (sample_ms * 1e-3) / 1e9
        summary["encode_gflops_per_s"] = enc_f / (encode_ms * 1e-3) / 1e9
    report = {
        "bundle": str(bundle.path) if config.bundle else f"fresh {config.size} {config.kind}",
        "policy_fingerprint": bundle.fingerprint,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items() if k != "notes"},
        "model": {"kind": bundle.manifest.kind, "chunk_length": bundle.manifest.chunk_length,
                  "num_steps": bundle.manifest.num_steps, "feature_dim": bundle.manifest.feature_dim,
                  "sampler": bundle.manifest.sampler,
                  "onnx_bytes": sum(bundle.file(f).stat().st_size for f in bundle.manifest.files),
                  "parameters": sum(p.numel() for p in policy.parameters()) if policy is not None else None},
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
        "summary": summary,
        "notes": notes,
    }
    return report


def format_table(report: dict) -> str:
    """The report as a fixed-width table: one row per (impl, N, verifier), p50/p99 per stage in ms."""
    width = max([13, *(len(r["impl"]) for r in report["rows"])])
    head = f"{'impl':<{width}} {'N':>3} {'verif':>5} " + " ".join(f"{s:>15}" for s in STAGES)
    lines = [head, " " * (width + 11) + " ".join(f"{'p50 / p99 ms':>15}" for _ in STAGES), "-" * len(head)]
    for r in sorted(report["rows"], key=lambda r: (r["n"], r["impl"] != "runtime", r["impl"], r["verifier"])):
        cells = " ".join(f"{r[s]['p50']:>7.2f}/{r[s]['p99']:<7.2f}" for s in STAGES)
        lines.append(f"{r['impl']:<{width}} {r['n']:>3} {'yes' if r['verifier'] else 'no':>5} {cells}")
    lines.append("")
    for key, value in report["summary"].items():
        lines.append(f"{key:<34} {value:.3f}" if isinstance(value, float) else f"{key:<34} {value}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
