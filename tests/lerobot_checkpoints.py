"""Tiny LeRobot checkpoints with random weights and non-trivial statistics, made offline by the tests.

Each is what `lerobot-train` leaves behind: `policy.save_pretrained(dir)` plus both processor pipelines.
Regenerate by calling the builders (they take about a second each); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _stats(rng, shape, lo, hi) -> dict[str, np.ndarray]:
    a = rng.uniform(lo, hi, size=(2000, *shape)).astype(np.float32)
    out = {"mean": a.mean(0), "std": a.std(0), "min": a.min(0), "max": a.max(0)}
    for q in (1, 10, 90, 99):
        out[f"q{q:02d}"] = np.quantile(a, q / 100, axis=0).astype(np.float32)
    return out


def diffusion_checkpoint(out: str | Path, *, cameras=("cam_high", "cam_low"), scheduler: str = "DDIM",
                         n_obs_steps: int = 2, image_hw=(48, 64), seed: int = 0) -> Path:
    """A LeRobot Diffusion Policy: ResNet18 (GroupNorm) per frame, a small UNet, 5 denoising steps, horizon 16,
    8 executed actions, MIN_MAX state/action and per-camera MEAN_STD images."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    h, w = image_hw
    cfg = DiffusionConfig(
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
        pretrained_backbone_weights=None, use_group_norm=True, down_dims=(32, 64, 128), horizon=16,
        n_action_steps=8, n_obs_steps=n_obs_steps, noise_scheduler_type=scheduler, num_inference_steps=5,
        crop_shape=(h - 8, w - 8), spatial_softmax_num_keypoints=8, diffusion_step_embed_dim=32, device="cpu")
    torch.manual_seed(seed)
    policy = DiffusionPolicy(cfg).eval()
    rng = np.random.default_rng(seed)
    stats = {"observation.state": _stats(rng, (14,), -1.0, 1.0), "action": _stats(rng, (14,), -1.5, 1.2)}
    for c in cameras:
        stats[f"observation.images.{c}"] = {
            "mean": rng.uniform(0.3, 0.6, (3, 1, 1)).astype(np.float32),
            "std": rng.uniform(0.15, 0.3, (3, 1, 1)).astype(np.float32),
            "min": np.zeros((3, 1, 1), np.float32), "max": np.ones((3, 1, 1), np.float32)}
    stats = {k: {s: torch.from_numpy(np.asarray(v)) for s, v in d.items()} for k, d in stats.items()}
    pre, post = make_diffusion_pre_post_processors(cfg, dataset_stats=stats)
    out = Path(out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------
# pi0 / pi05: PaliGemma + Gemma expert, shrunk. LeRobot fixes their sizes by variant name (gemma_2b and
# gemma_300m, a So400m vision tower), so the tests patch the size table while building and importing.

TINY_GEMMA = dict(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14)


def tiny_pi(monkeypatch) -> None:
    """Makes LeRobot's pi0 and pi05 build a two-layer Gemma and a two-layer vision tower (monkeypatch
    undoes it at the end of the test or module)."""
    import lerobot.policies.pi0.modeling_pi0 as pi0
    import lerobot.policies.pi05.modeling_pi05 as pi05

    for module in (pi0, pi05):
        monkeypatch.setattr(module, "get_gemma_config", lambda variant, m=module: m.GemmaConfig(**TINY_GEMMA))
        base = module.PaliGemmaForConditionalGenerationWithPiGemma

        class Tiny(base):
            def __init__(self, config):
                for key, value in TINY_VISION.items():
                    setattr(config.vision_config, key, value)
                config.vision_config.projection_dim = config.text_config.hidden_size
                super().__init__(config)

        monkeypatch.setattr(module, "PaliGemmaForConditionalGenerationWithPiGemma", Tiny)


def word_tokenizer(out: str | Path) -> Path:
    """A stand-in for PaliGemma's tokenizer (gated on the hub): word-level, `<pad>` 0 and `<bos>` 2 as in
    PaliGemma, the words of our task instructions, the digits 0..255 pi05 writes state bins with, and the
    newline pi0 appends. Saved the way `transformers` saves a fast tokenizer (tokenizer.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ("pick up the red cube with right arm and hand it to left grasp green bar at both ends lift "
             "peg socket insert into task state action transfer , ; : .").split()
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\n": 4}
    for token in [*words, *map(str, range(256))]:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    out = Path(out)
    fast.save_pretrained(out)
    return out


def pi_checkpoint(out: str | Path, tokenizer: str | Path, *, kind: str = "pi0", cameras=("cam_high", "cam_low"),
                  seed: int = 0) -> Path:
    """A tiny pi0 or pi05 (after `tiny_pi`): 56x56 images, 16-action chunks, 10 Euler steps, MEAN_STD (pi0)
    or QUANTILES (pi05) state/action statistics; the tokenizer step points at `tokenizer`."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature

    if kind == "pi0":
        from lerobot.policies.pi0.configuration_pi0 import PI0Config as Config
        from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
        from lerobot.policies.pi0.processor_pi0 import make_pi0_pre_post_processors as processors
    else:
        from lerobot.policies.pi05.configuration_pi05 import PI05Config as Config
        from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
        from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors as processors
    import lerobot.processor.tokenizer_processor as tp

    cfg = Config(
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 56, 56)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
        chunk_size=16, n_action_steps=8, image_resolution=(56, 56),
        tokenizer_max_length=16 if kind == "pi0" else 48, device="cpu")
    torch.manual_seed(seed)
    policy = Policy(cfg).eval()
    rng = np.random.default_rng(seed)
    stats = {"observation.state": _stats(rng, (14,), -1.0, 1.0), "action": _stats(rng, (14,), -1.5, 1.2)}
    for c in cameras:
        stats[f"observation.images.{c}"] = {"mean": np.full((3, 1, 1), 0.5, np.float32),
                                            "std": np.full((3, 1, 1), 0.25, np.float32)}
    stats = {k: {s: torch.from_numpy(np.asarray(v)) for s, v in d.items()} for k, d in stats.items()}
    original = tp.AutoTokenizer.from_pretrained
    tp.AutoTokenizer.from_pretrained = lambda name, *a, **k: original(str(tokenizer), *a, **k)
    try:
        pre, post = processors(cfg, dataset_stats=stats)
    finally:
        tp.AutoTokenizer.from_pretrained = original
    out = Path(out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def tiny_vlm(out: str | Path, tokenizer: str | Path) -> Path:
    """A local stand-in for SmolVLM2 (SmolVLA's VLM, on the hub): a four-layer Llama text model and a
    two-layer vision tower, with `word_tokenizer`'s vocabulary and SmolVLM's image tokens, its processor."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.smolvlm import (SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                                             SmolVLMVideoProcessor)

    out = Path(out)
    SmolVLMConfig(text_config=dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
                  vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=64, patch_size=16),
                  scale_factor=2).save_pretrained(out)
    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer), extra_special_tokens={
        "fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
        "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    SmolVLMProcessor(SmolVLMImageProcessor(), tok, SmolVLMVideoProcessor(), image_seq_len=4).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def smolvla_checkpoint(out: str | Path, vlm: str | Path, *, cameras=("cam_high", "cam_low"), seed: int = 0) -> Path:
    """A tiny SmolVLA on `tiny_vlm`: 48x64 dataset images padded (left/top) to 64x64, 16-action chunks, 10
    flow steps, MEAN_STD state/action statistics, prompts padded to the longest (as SmolVLA trains)."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.smolvla.processor_smolvla import make_smolvla_pre_post_processors

    cfg = SmolVLAConfig(
        input_features={**{f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, 48, 64)) for c in cameras},
                        "observation.state": PolicyFeature(FeatureType.STATE, (14,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
        vlm_model_name=str(vlm), load_vlm_weights=False, num_vlm_layers=4, num_expert_layers=-1,
        resize_imgs_with_padding=(64, 64), chunk_size=16, n_action_steps=8, tokenizer_max_length=16, device="cpu")
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(cfg).eval()
    rng = np.random.default_rng(seed)
    stats = {"observation.state": _stats(rng, (14,), -1.0, 1.0), "action": _stats(rng, (14,), -1.5, 1.2)}
    for c in cameras:
        stats[f"observation.images.{c}"] = {"mean": np.full((3, 1, 1), 0.5, np.float32),
                                            "std": np.full((3, 1, 1), 0.25, np.float32)}
    stats = {k: {s: torch.from_numpy(np.asarray(v)) for s, v in d.items()} for k, d in stats.items()}
    pre, post = make_smolvla_pre_post_processors(cfg, dataset_stats=stats)
    out = Path(out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out
