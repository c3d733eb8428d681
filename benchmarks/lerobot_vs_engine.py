"""LeRobot's own inference against the engine on the bundle imported from it, for each policy family.

For each family a policy with random weights is saved the way `lerobot-train` saves it, imported with
`taco import lerobot`, and measured with `taco bench`'s LeRobot baselines in one run, interleaved round
by round: LeRobot called N times (preprocessor -> predict_action_chunk -> postprocessor, what a user does
today), LeRobot with the observation repeated N times in one batch (TACO's release), and the engine
(shared prefix, N candidates in one sampler call). Prints a table and writes JSON.

    .venv/bin/python benchmarks/lerobot_vs_engine.py --json build/lerobot_vs_engine.json [--quick]
    .venv/bin/python benchmarks/lerobot_vs_engine.py --families smolvla-real --iters 3 --json build/smolvla_real.json

`tiny` families are the test suite's tiny configurations (tests/lerobot_checkpoints.py). `smolvla-real` is
SmolVLA at its published dimensions with random weights: SmolVLM2-500M's text model (960 wide, 15 heads,
5 KV heads) truncated to 16 layers as SmolVLA does, its SigLIP vision tower (768 wide, 12 layers, patch 16,
512x512 images, pixel shuffle 4), the expert 0.75 wide, 50-action chunks, 10 flow steps. Its prompt uses
the tests' word-level tokenizer (the real one is on the hub), which changes nothing measured here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoint builders

FAMILIES = ("diffusion", "pi0", "pi05", "smolvla", "smolvla-real")


def real_smolvla(out: Path, tokenizer: Path) -> Path:
    """SmolVLA at its published size, random weights, two 480x640 cameras."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors
    from lerobot_checkpoints import _stats
    from transformers import PreTrainedTokenizerFast
    from transformers.models.smolvlm import (SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                                             SmolVLMVideoProcessor)
    import numpy as np

    vlm = out / "vlm"
    SmolVLMConfig(text_config=dict(model_type="llama", vocab_size=49280, hidden_size=960, intermediate_size=2560,
                                   num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
                                   rope_theta=100000.0, max_position_embeddings=8192),
                  vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, image_size=512, patch_size=16),
                  scale_factor=4).save_pretrained(vlm)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer), extra_special_tokens={
        "fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
        "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    SmolVLMProcessor(SmolVLMImageProcessor(), tok, SmolVLMVideoProcessor(), image_seq_len=64).save_pretrained(vlm)
    tok.save_pretrained(vlm)
    cameras = ("cam_high", "cam_low")
    cfg = SmolVLAConfig(
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 480, 640)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
        vlm_model_name=str(vlm), load_vlm_weights=False, device="cpu")
    torch.manual_seed(0)
    policy = SmolVLAPolicy(cfg).eval()
    rng = np.random.default_rng(0)
    stats = {"observation.state": _stats(rng, (14,), -1.0, 1.0), "action": _stats(rng, (14,), -1.5, 1.2)}
    for c in cameras:
        stats[f"observation.images.{c}"] = {"mean": np.full((3, 1, 1), 0.5, np.float32),
                                            "std": np.full((3, 1, 1), 0.25, np.float32)}
    stats = {k: {s: torch.from_numpy(np.asarray(v)) for s, v in d.items()} for k, d in stats.items()}
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    ck = out / "checkpoint"
    policy.save_pretrained(ck)
    pre.save_pretrained(ck)
    post.save_pretrained(ck)
    return ck


def checkpoint(family: str, root: Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, tokenizer or VLM folder) of a family's policy with random weights."""
    import lerobot_checkpoints as lc

    if family == "diffusion":
        return lc.diffusion_checkpoint(root / "diffusion"), None
    tok = lc.word_tokenizer(root / "tokenizer") if not (root / "tokenizer").exists() else root / "tokenizer"
    if family in ("pi0", "pi05"):
        return lc.pi_checkpoint(root / family, tok, kind=family), tok
    if family == "smolvla":
        vlm = lc.tiny_vlm(root / "vlm", tok)
        return lc.smolvla_checkpoint(root / "smolvla", vlm), None
    return real_smolvla(root / "real", tok), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="diffusion,pi0,pi05,smolvla",
                        help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--n", default="1,4,16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and torch intra-op threads")
    parser.add_argument("--prune", default="2:1",
                        help="pruned settings the engine is also measured at, flow families ('' for none)")
    parser.add_argument("--engine-only", action="store_true",
                        help="skip LeRobot's own inference (a minute a round for the real SmolVLA at N=16)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    for family in families:
        if family not in FAMILIES:
            raise SystemExit(f"--families: unknown {family!r} (one of {', '.join(FAMILIES)})")

    import pytest
    from lerobot_checkpoints import tiny_pi

    from policies.lerobot import import_lerobot
    from policies.manifest import ALOHA_JOINTS
    from runtime.bench import BenchConfig, format_table, run_bench

    patch = pytest.MonkeyPatch()
    tiny_pi(patch)  # pi0/pi05 are measured tiny; their real sizes do not fit this machine's memory twice
    root = Path(tempfile.mkdtemp(prefix="lerobot-vs-engine-"))
    iters = 3 if args.quick else args.iters
    results = {}
    for family in families:
        ck, folder = checkpoint(family, root)
        bundle = import_lerobot(ck, root / f"{family}-bundle", joint_names=ALOHA_JOINTS, fps=50, tokenizer=folder)
        config = BenchConfig(ns=tuple(int(v) for v in args.n.split(",")), iters=iters, warmup=1,
                             bundle=str(bundle.path), threads=args.threads,
                             lerobot=None if args.engine_only else str(ck), tokenizer=str(folder) if folder else None,
                             prunes=tuple(p for p in args.prune.split(",") if p), naive=False)
        report = run_bench(config, progress=lambda msg: print(msg, file=sys.stderr))
        print(f"\n== {family}\n{format_table(report)}")
        results[family] = report
    patch.undo()
    print(f"\n{'family':<14} {'vs LeRobot x N':>15} {'vs LeRobot batch':>17} {'engine N16/N1':>14} "
          f"{'pruned N16/N1':>14}   (N=16; pruned with the benchmark's verifier)")
    for family, report in results.items():
        s = report["summary"]
        print(f"{family:<14} {s.get('speedup_over_lerobot_calls_n16', float('nan')):>14.2f}x "
              f"{s.get('speedup_over_lerobot_batch_n16', float('nan')):>16.2f}x "
              f"{s.get('ratio_n16_over_n1', float('nan')):>14.2f} "
              f"{s.get('ratio_n16_pruned_over_n1', float('nan')):>14.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
