"""`taco import lerobot`: a LeRobot checkpoint (`save_pretrained` of a policy and its processors) as a bundle.

The checkpoint folder is read with json and safetensors first, and everything LeRobot would pass over in
silence is refused with an `ImportRefused` naming what was wrong: a policy type that is not a flow or
diffusion sampler, a processor step this importer does not know, missing normalisation statistics, weights
that do not account for every key of the model, feature names that do not match. Then the model is built
with LeRobot's own classes (offline: no hub, no pretrained backbone download), wrapped in two graphs that
call LeRobot's own code, and exported:

- `encoder.onnx`: the observation (history) -> the prefix the sampler takes: Diffusion Policy's global
  conditioning vector `global_cond: float32[B, D]`, or a VLA's KV cache `prefix_kv` with `prefix_mask`
  (image normalisation and LeRobot's image resizing are inside the graph);
- `sampler.onnx`: the prefix shared by N candidates + their noise -> the chunk the robot executes and the
  verifier feature per candidate.

Families: `diffusion` (DDIM, DDPM), `pi0`, `pi05`, `smolvla`. Needs the `train` extra (torch, lerobot with
its diffusion, pi and smolvla dependencies).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.bundle import hash_files, load_policy_bundle, write_manifest
from policies.errors import BundleError
from policies.extras import require
from policies.manifest import CameraSpec, Normalization, PolicyManifest
from policies.schema import staged_folder
from policies.tokenizer import NoTokenizer

# The LeRobot release whose code and checkpoint format this importer reads.
LEROBOT_VERSION = "0.6.1"
# Policy types that sample actions from noise (flow or diffusion), which this importer exports.
SAMPLER_TYPES = ("diffusion", "pi0", "pi05", "smolvla")
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
# Processor steps that change nothing the bundle must reproduce (batching, device placement).
NEUTRAL_STEPS = {"to_batch_processor", "device_processor", "rename_observations_processor"}
# Processor steps each family's bundle reproduces (the tokenizer and the prompt steps by the bundle's
# tokenizer; relative actions only when disabled).
KNOWN_STEPS = {
    "diffusion": ({"normalizer_processor"}, {"unnormalizer_processor"}),
    "pi0": ({"normalizer_processor", "pi0_new_line_processor", "tokenizer_processor", "relative_actions_processor"},
            {"unnormalizer_processor", "absolute_actions_processor"}),
    "pi05": ({"normalizer_processor", "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor",
              "relative_actions_processor"}, {"unnormalizer_processor", "absolute_actions_processor"}),
    "smolvla": ({"normalizer_processor", "smolvla_new_line_processor", "tokenizer_processor"},
                {"unnormalizer_processor"}),
}
# LeRobot's normalisation modes (lerobot/processor/normalize_processor.py) and the statistics each needs.
MODE_STATS = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
              "QUANTILE10": ("q10", "q90"), "IDENTITY": ()}


class ImportRefused(BundleError):
    """The checkpoint is not one this importer can turn into a bundle that computes what LeRobot computes."""


@dataclass(frozen=True)
class Checkpoint:
    """A LeRobot checkpoint folder as read from disk, before any model is built."""

    path: Path
    # config.json: the policy config with its "type".
    config: dict
    # The steps of policy_preprocessor.json / policy_postprocessor.json: [{"registry_name", "config", "state_file"?}].
    pre_steps: list[dict]
    post_steps: list[dict]
    # "<feature>.<stat>" -> array, from the normaliser step's state file.
    stats: dict[str, np.ndarray]
    # sha256 of model.safetensors.
    weights_sha256: str

    @property
    def type(self) -> str:
        return self.config["type"]

    @property
    def norm_map(self) -> dict[str, str]:
        """Feature type (VISUAL, STATE, ACTION) -> LeRobot normalisation mode."""
        step = _step(self.pre_steps, "normalizer_processor", "policy_preprocessor.json")
        return dict(step["config"].get("norm_map") or self.config.get("normalization_mapping") or {})

    @property
    def eps(self) -> float:
        """The normaliser's guard against a zero spread (added to std, or replacing a zero range)."""
        return float(_step(self.pre_steps, "normalizer_processor", "policy_preprocessor.json")["config"]
                     .get("eps", 1e-8))

    def affine(self, key: str, kind: str, inverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """LeRobot's normalisation of feature `key` (of type `kind`) as x_norm = (x - mean) / std, exactly:
        MEAN_STD divides by std + eps going in and multiplies by std coming back; the range modes map
        [lo, hi] to [-1, 1] with a zero range replaced by eps. Arrays keep the statistic's shape (IDENTITY: [1])."""
        mode = self.norm_map[kind]
        if mode == "IDENTITY":
            return np.zeros(1), np.ones(1)  # broadcast by the caller
        lo, hi = (self.stats[f"{key}.{s}"].astype(np.float64) for s in MODE_STATS[mode])
        if mode == "MEAN_STD":
            return lo, (hi if inverse else hi + self.eps)
        span = np.where(hi - lo == 0, self.eps, hi - lo)
        return lo + span / 2, span / 2

    @property
    def cameras(self) -> list[tuple[str, tuple[int, ...]]]:
        """(camera name, [3, H, W]) in the order the policy stacks them (its input_features order)."""
        return [(key[len(IMAGE_PREFIX):], tuple(f["shape"])) for key, f in self.config["input_features"].items()
                if f["type"] == "VISUAL"]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ImportRefused(what, f"missing from {path.parent} (a LeRobot save_pretrained folder holds it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ImportRefused(what, f"not valid JSON ({err})") from err


def _step(steps: list[dict], name: str, where: str) -> dict:
    found = [s for s in steps if s.get("registry_name") == name]
    if not found:
        raise ImportRefused(where, f"has no {name!r} step")
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Reads and checks a checkpoint folder with json and safetensors only; refuses what cannot be imported."""
    safetensors_numpy = require("safetensors.numpy")
    folder = Path(path)
    if not folder.is_dir():
        raise ImportRefused("checkpoint", f"{folder} is not a folder")
    config = _read_json(folder / "config.json", "config.json")
    kind = config.get("type")
    if kind not in SAMPLER_TYPES:
        raise ImportRefused("config.json.type", f"{kind!r} is not a flow or diffusion sampler "
                                                f"(importable types: {', '.join(SAMPLER_TYPES)})")
    pre = _read_json(folder / "policy_preprocessor.json", "policy_preprocessor.json").get("steps", [])
    post = _read_json(folder / "policy_postprocessor.json", "policy_postprocessor.json").get("steps", [])
    for steps, known, where in ((pre, KNOWN_STEPS[kind][0], "policy_preprocessor.json"),
                                (post, KNOWN_STEPS[kind][1], "policy_postprocessor.json")):
        for i, step in enumerate(steps):
            name = step.get("registry_name")
            if name not in NEUTRAL_STEPS | known:
                raise ImportRefused(f"{where}.steps[{i}]", f"unknown processor step {name!r}: its effect would be "
                                                           f"missing from the bundle")
            if name in ("relative_actions_processor", "absolute_actions_processor") and \
                    (step.get("config") or {}).get("enabled", False):
                raise ImportRefused(f"{where}.steps[{i}]", "relative actions are not supported yet")
    rename = _step(pre, "rename_observations_processor", "policy_preprocessor.json")["config"].get("rename_map") \
        if any(s.get("registry_name") == "rename_observations_processor" for s in pre) else {}
    if rename:
        raise ImportRefused("policy_preprocessor.json.rename_observations_processor",
                            f"renames observations ({rename}); name the cameras as the policy does instead")
    norm = _step(pre, "normalizer_processor", "policy_preprocessor.json")
    if "state_file" not in norm or not (folder / norm["state_file"]).is_file():
        raise ImportRefused("policy_preprocessor.json.normalizer_processor.state_file",
                            "missing: the checkpoint has no normalisation statistics")
    stats = safetensors_numpy.load_file(str(folder / norm["state_file"]))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ImportRefused("model.safetensors", f"missing from {folder}")
    checkpoint = Checkpoint(folder, config, pre, post, stats, _sha256(weights))
    _check_features(checkpoint)
    return checkpoint


def _check_features(ck: Checkpoint) -> None:
    inputs, outputs = ck.config.get("input_features", {}), ck.config.get("output_features", {})
    if STATE_KEY not in inputs:
        raise ImportRefused("config.json.input_features", f"has no {STATE_KEY!r}")
    if ACTION_KEY not in outputs:
        raise ImportRefused("config.json.output_features", f"has no {ACTION_KEY!r}")
    for key, feature in inputs.items():
        if key != STATE_KEY and not key.startswith(IMAGE_PREFIX):
            raise ImportRefused(f"config.json.input_features.{key}", "only camera images and the state are supported")
        if key.startswith(IMAGE_PREFIX) and feature["type"] != "VISUAL":
            raise ImportRefused(f"config.json.input_features.{key}", f"expected VISUAL, got {feature['type']}")
    if not ck.cameras:
        raise ImportRefused("config.json.input_features", "has no camera (observation.images.*)")
    modes = ck.norm_map
    norm_features = _step(ck.pre_steps, "normalizer_processor", "policy_preprocessor.json")["config"].get("features", {})
    for key, feature in {**inputs, **outputs}.items():
        if norm_features and key not in norm_features:
            raise ImportRefused("policy_preprocessor.json.normalizer_processor.features",
                                f"does not name {key!r}, which the policy takes")
        mode = modes.get(feature["type"])
        if mode not in MODE_STATS:
            raise ImportRefused(f"normalization_mapping.{feature['type']}", f"unknown mode {mode!r}")
        for stat in MODE_STATS[mode]:
            if f"{key}.{stat}" not in ck.stats:
                raise ImportRefused(f"stats.{key}.{stat}", f"missing: {mode} normalisation of {key} needs it "
                                                           f"(LeRobot would pass {key} through unnormalised)")


def normalization(ck: Checkpoint) -> Normalization:
    """The bundle's state and action statistics from the checkpoint's normaliser (images are normalised inside
    the encoder graph, per camera as LeRobot does)."""
    state_dim = int(np.prod(ck.config["input_features"][STATE_KEY]["shape"]))
    action_dim = int(np.prod(ck.config["output_features"][ACTION_KEY]["shape"]))
    s_mean, s_std = (np.broadcast_to(v.reshape(-1), (state_dim,)) for v in ck.affine(STATE_KEY, "STATE"))
    a_mean, a_std = (np.broadcast_to(v.reshape(-1), (action_dim,)) for v in ck.affine(ACTION_KEY, "ACTION", True))
    # A constant action dimension (std 0) is unnormalised to its mean; the manifest needs a positive std.
    a_std = np.where(a_std > 0, a_std, 1e-12)
    return Normalization(tuple(map(float, s_mean)), tuple(map(float, s_std)), tuple(map(float, a_mean)),
                         tuple(map(float, a_std)), image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# Building LeRobot's model offline, and the graphs around it.

def build_policy(ck: Checkpoint, vlm: str | Path | None = None):
    """LeRobot's policy with the checkpoint's weights; refuses unless every key is accounted for.

    `vlm`: for SmolVLA, a local folder with its VLM's config and processor (instead of the name saved).
    """
    torch = require("torch")
    require("lerobot")
    safetensors_torch = require("safetensors.torch")
    from lerobot.configs.policies import PreTrainedConfig

    with _offline():
        if ck.type == "diffusion":
            from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy  # registers its config

            config = PreTrainedConfig.from_pretrained(ck.path)

            # Otherwise torchvision downloads ImageNet weights, which the checkpoint overwrites anyway.
            config.pretrained_backbone_weights = None
            config.device = "cpu"
            policy = DiffusionPolicy(config)
        elif ck.type == "smolvla":
            from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

            config = PreTrainedConfig.from_pretrained(ck.path)
            config.device = "cpu"
            # The checkpoint holds every weight; the VLM folder gives only its config and processor.
            config.load_vlm_weights = False
            if vlm is not None:
                config.vlm_model_name = str(vlm)
            if not (Path(config.vlm_model_name) / "config.json").is_file():
                raise ImportRefused("config.json.vlm_model_name",
                                    f"{config.vlm_model_name!r} is not a local folder with the VLM's config.json "
                                    f"(it is not downloaded): pass --tokenizer DIR, the VLM's folder")
            for flag in ("adapt_to_pi_aloha",):
                if getattr(config, flag):
                    raise ImportRefused(f"config.json.{flag}", "not supported yet")
            if not config.use_cache:
                raise ImportRefused("config.json.use_cache", "the bundle runs the prefix once: a KV cache is needed")
            policy = SmolVLAPolicy(config)
        else:
            if ck.type == "pi0":
                from lerobot.policies.pi0.modeling_pi0 import PI0Policy as Policy
            else:
                from lerobot.policies.pi05.modeling_pi05 import PI05Policy as Policy
            config = PreTrainedConfig.from_pretrained(ck.path)
            config.device = "cpu"
            policy = Policy(config)
    state = safetensors_torch.load_file(str(ck.path / "model.safetensors"))
    if ck.type in ("pi0", "pi05"):
        # The key fixes LeRobot's own loader applies (openpi's older names), then its "model." prefix.
        logging.disable(logging.WARNING)  # it warns about every patch-embedding key it leaves alone
        try:
            state = {k if k.startswith("model.") else f"model.{k}": v
                     for k, v in policy._fix_pytorch_state_dict_keys(state, policy.config).items()}
        finally:
            logging.disable(logging.NOTSET)
    model_keys = set(policy.state_dict())
    missing, unexpected = sorted(model_keys - set(state)), sorted(set(state) - model_keys)
    if missing or unexpected:
        raise ImportRefused("model.safetensors", f"does not match the model: {len(missing)} missing keys "
                                                 f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    for key, value in policy.state_dict().items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ImportRefused(f"model.safetensors.{key}", f"shape {list(state[key].shape)}, the model has "
                                                            f"{list(value.shape)}")
    policy.load_state_dict(state, strict=True)
    return policy.eval().to(torch.float32)


@contextlib.contextmanager
def _offline():
    """No hub access while LeRobot reads the checkpoint: everything it needs is in the folder."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _camera_normalizer(ck: Checkpoint):
    """A module holding each camera's LeRobot normalisation (images arrive in [0, 1], as LeRobot's do)."""
    torch = require("torch")

    class CameraNormalizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, (name, _) in enumerate(ck.cameras):
                mean, std = ck.affine(f"{IMAGE_PREFIX}{name}", "VISUAL")
                self.register_buffer(f"mean_{i}", torch.tensor(np.broadcast_to(mean, (3, 1, 1)), dtype=torch.float32))
                self.register_buffer(f"std_{i}", torch.tensor(np.broadcast_to(std, (3, 1, 1)), dtype=torch.float32))

        def forward(self, images):
            return [(x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}") for i, x in enumerate(images)]

    return CameraNormalizer()


def _example_observation(ck: Checkpoint, names, history: int = 1):
    torch = require("torch")
    g = torch.Generator().manual_seed(0)
    t_axis = [history] if history > 1 else []
    images = [torch.rand(1, *t_axis, *shape, generator=g) for _, shape in ck.cameras]
    state = torch.rand(1, *t_axis, len(names["state"]), generator=g) * 2 - 1
    return images, state


# Attention masks: LeRobot masks with -2.38e38 (openpi's constant) or float32's lowest value, which become
# -inf in float16 and turn a fully masked row (a padding token's) into NaN, which its keys and values then
# carry into every later layer. -1e4 masks exactly as well in float32 (exp underflows to 0 either way) and
# survives float16 (TensorRT's FP16 engines).
MASK_VALUE = -1e4
_HUGE_NEGATIVE = -1e30


def _fp16_safe_masks(path: Path) -> int:
    """Replaces constants of -1e30 or below in an exported graph by MASK_VALUE; returns how many."""
    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    replaced = 0

    def fix(tensor):
        nonlocal replaced
        if tensor.data_type != onnx.TensorProto.FLOAT or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return tensor
        value = numpy_helper.to_array(tensor)
        huge = value <= _HUGE_NEGATIVE
        if not huge.any():
            return tensor
        replaced += int(huge.sum())
        return numpy_helper.from_array(np.where(huge, np.float32(MASK_VALUE), value).astype(np.float32), tensor.name)

    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(fix(attr.t))
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(fix(init))
    if replaced:
        onnx.save(model, str(path))  # external weights, if any, stay where they are
    return replaced


def _constant_time_embedding(original):
    """LeRobot's sinusoidal time embedding, evaluated eagerly for a time that is the same for the whole
    batch (each unrolled flow step's), and returned as a float32 constant expanded to the batch."""
    torch = require("torch")

    def embedding(time, dimension, min_period, max_period, device="cpu"):
        value = torch.full((1,), float(time.reshape(-1)[0]), dtype=torch.float32)  # a constant of the trace
        table = original(value, dimension, min_period=min_period, max_period=max_period, device=torch.device("cpu"))
        return table.to(torch.float32).expand(time.shape[0], dimension)

    return embedding


def _diffusion_plan(policy, ck: Checkpoint, names) -> Plan:
    """The encoder and sampler of a LeRobot Diffusion Policy, calling its own code."""
    torch = require("torch")
    nn = torch.nn
    model = policy.diffusion
    cfg = policy.config

    class CenterCrop(nn.Module):
        """torchvision's CenterCrop as a constant slice (its rounding does not trace)."""

        def __init__(self, height: int, width: int, crop: tuple[int, int]):
            super().__init__()
            self.top, self.left = int(round((height - crop[0]) / 2.0)), int(round((width - crop[1]) / 2.0))
            self.crop = crop

        def forward(self, x):
            return x[..., self.top: self.top + self.crop[0], self.left: self.left + self.crop[1]]

    if cfg.crop_shape is not None:
        (_, (_, h, w)) = ck.cameras[0]
        if cfg.resize_shape is not None:
            h, w = cfg.resize_shape
        encoders = model.rgb_encoder if isinstance(model.rgb_encoder, nn.ModuleList) else [model.rgb_encoder]
        for encoder in encoders:
            encoder.center_crop = CenterCrop(h, w, tuple(cfg.crop_shape))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.normalize = _camera_normalizer(ck)

        def forward(self, *inputs):
            *images, state = inputs
            if cfg.n_obs_steps == 1:
                images, state = [x.unsqueeze(1) for x in images], state.unsqueeze(1)
            # Images arrive in [0, 1]; each camera is normalised with its own statistics, as LeRobot's
            # normaliser does, then stacked in the policy's camera order: [B, T, cameras, 3, H, W].
            batch = {STATE_KEY: state, "observation.images": torch.stack(self.normalize(images), dim=2)}
            return self.model._prepare_global_conditioning(batch)

    class Sampler(nn.Module):
        def __init__(self, step_noise: bool):
            super().__init__()
            self.model = model
            self.step_noise = step_noise

        def forward(self, global_cond, noise, step_noise=None):
            captured = []
            hook = self.model.unet.mid_modules[-1].register_forward_hook(lambda m, i, out: captured.append(out))
            try:
                with _replayed_step_noise(step_noise):
                    sample = self.model.conditional_sample(noise.shape[0], global_cond=global_cond.expand(
                        noise.shape[0], -1), noise=noise)
            finally:
                hook.remove()
            start = cfg.n_obs_steps - 1
            chunks = sample[:, start: start + cfg.n_action_steps]
            # The UNet bottleneck at the final denoising step, averaged over time: [N, down_dims[-1]].
            features = captured[-1].mean(dim=-1)
            return chunks, features

    history = int(cfg.n_obs_steps)
    images, state = _example_observation(ck, names, history)
    num_steps = int(model.num_inference_steps)
    return Plan(
        kind="diffusion", encoder=Encoder(), encoder_args=(*images, state),
        encoder_inputs=[*(f"image_{c}" for c, _ in ck.cameras), "state"], prefix=("global_cond",),
        sampler=Sampler(cfg.noise_scheduler_type == "DDPM"), noise_shape=(int(cfg.horizon), len(names["action"])),
        step_noise=cfg.noise_scheduler_type == "DDPM", chunk_length=int(cfg.n_action_steps), num_steps=num_steps,
        feature_dim=int(cfg.down_dims[-1]),
        feature_description="UNet bottleneck (output of the last mid block) at the final denoising step, "
                            "averaged over time",
        history=history, tokenizer=NoTokenizer(), files={},
        source={"noise_scheduler": cfg.noise_scheduler_type})


def _pi_plan(policy, ck: Checkpoint, names, tokenizer: str | Path | None) -> Plan:
    """The encoder and sampler of a LeRobot pi0 or pi0.5, calling its own code.

    The encoder runs the prefix (images through SigLIP, the prompt's tokens) once and returns its KV cache,
    `prefix_kv: float32[B, layers, 2, kv_heads, P, head_dim]`, with `prefix_mask: bool[B, P]` (and, for pi0,
    the padded normalised state its suffix takes). The sampler rebuilds the cache for N candidates and runs
    LeRobot's Euler loop on its own `denoise_step`.
    """
    torch = require("torch")
    nn = torch.nn
    from lerobot.policies.common.flow_matching import euler_integrate
    from lerobot.policies.common.vla_utils import make_att_2d_masks, prepare_attention_masks_4d
    from transformers.cache_utils import DynamicCache

    cfg, model = policy.config, policy.model
    pi05 = ck.type == "pi05"
    text = _text_tokenizer(ck, tokenizer, prompt="pi05" if pi05 else "newline")
    if getattr(cfg, "empty_cameras", 0):
        raise ImportRefused("config.json.empty_cameras", "placeholder cameras are not supported yet")
    image_keys = [f"{IMAGE_PREFIX}{c}" for c, _ in ck.cameras]
    if list(cfg.image_features) != image_keys:
        raise ImportRefused("config.json.input_features", f"camera order {list(cfg.image_features)} is not the "
                                                          f"features' order {image_keys}")
    pad_id = text.pad_id

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy
            self.normalize = _camera_normalizer(ck)

        def forward(self, *inputs):
            *images, state, tokens = inputs
            # LeRobot's own image path: resize with padding to the model's resolution, then [-1, 1].
            images, masks = self.policy._preprocess_images(dict(zip(image_keys, self.normalize(images))))
            embs, pad_masks, att_masks = self.policy.model.embed_prefix(images, masks, tokens, tokens != pad_id)
            position_ids = torch.cumsum(pad_masks, dim=1) - 1
            vlm = self.policy.model.paligemma_with_expert
            vlm.paligemma.model.language_model.config._attn_implementation = "eager"
            _, cache = vlm.forward(attention_mask=prepare_attention_masks_4d(make_att_2d_masks(pad_masks, att_masks)),
                                   position_ids=position_ids, past_key_values=None, inputs_embeds=[embs, None],
                                   use_cache=True)
            prefix_kv = torch.stack([torch.stack([keys, values], dim=1) for keys, values, *_ in cache], dim=1)
            if pi05:
                return prefix_kv, pad_masks
            return prefix_kv, pad_masks, self.policy.prepare_state({STATE_KEY: state})

    class Sampler(nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, prefix_kv, prefix_mask, *rest):
            *state, noise = rest[:-3]
            rtc = rest[-3:]
            n = noise.shape[0]
            kv = prefix_kv.expand(n, *prefix_kv.shape[1:])
            cache = DynamicCache(tuple((kv[:, i, 0], kv[:, i, 1], None) for i in range(kv.shape[1])))
            mask = prefix_mask.expand(n, prefix_mask.shape[1])
            extra = {} if pi05 else {"state": state[0].expand(n, state[0].shape[1])}
            captured = []
            hook = self.policy.model.action_out_proj.register_forward_pre_hook(
                lambda module, args: captured.append(args[0][:, 0]))
            try:
                x = euler_integrate(rtc_guided(lambda x_t, t: self.policy.model.denoise_step(
                    prefix_pad_masks=mask, past_key_values=cache, x_t=x_t, timestep=t, **extra), rtc),
                    noise, int(cfg.num_inference_steps))
            finally:
                hook.remove()
            return x[:, :, :len(names["action"])], captured[-1]

    images, state = _example_observation(ck, names)
    tokens = torch.full((1, text.max_length), pad_id, dtype=torch.long)
    tokens[0, :3] = torch.tensor([i for i in range(4) if i != pad_id][:3])  # a short prompt, then padding
    width = int(model.action_out_proj.in_features)
    return Plan(
        kind="flow", encoder=Encoder(), encoder_args=(*images, state, tokens),
        encoder_inputs=[*(f"image_{c}" for c, _ in ck.cameras), "state", "tokens"],
        prefix=("prefix_kv", "prefix_mask") if pi05 else ("prefix_kv", "prefix_mask", "state_padded"),
        sampler=Sampler(), noise_shape=(int(cfg.chunk_size), int(cfg.max_action_dim)), step_noise=False,
        chunk_length=int(cfg.chunk_size), num_steps=int(cfg.num_inference_steps), feature_dim=width,
        feature_description="action expert output at the first action token (the input of action_out_proj) "
                            "at the final flow step",
        history=1, tokenizer=text, files={text.file: text.folder}, rtc=True)


def _smolvla_plan(policy, ck: Checkpoint, names, vlm: str | Path) -> Plan:
    """The encoder and sampler of a LeRobot SmolVLA, calling its own code.

    The state is a prefix token, so the encoder takes it and the sampler does not; the expert's action
    tokens attend causally to each other, so the verifier feature averages them (the first one sees only
    the prefix and itself).
    """
    torch = require("torch")
    nn = torch.nn
    from lerobot.policies.common.flow_matching import euler_integrate
    from lerobot.policies.common.vla_utils import make_att_2d_masks
    from transformers.cache_utils import DynamicCache

    cfg, model = policy.config, policy.model
    text = _text_tokenizer(ck, vlm, prompt="newline", paddings=("max_length", "longest"))
    image_keys = [f"{IMAGE_PREFIX}{c}" for c, _ in ck.cameras]
    if list(cfg.image_features) != image_keys:
        raise ImportRefused("config.json.input_features", f"camera order {list(cfg.image_features)} is not the "
                                                          f"features' order {image_keys}")
    pad_id = text.pad_id

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy
            self.normalize = _camera_normalizer(ck)

        def forward(self, *inputs):
            *images, state, tokens = inputs
            batch = {**dict(zip(image_keys, self.normalize(images))), STATE_KEY: state}
            # LeRobot's own image path: resize with left/top padding to the model's resolution, then [-1, 1].
            images, masks = self.policy.prepare_images(batch)
            embs, pad_masks, att_masks = self.policy.model.embed_prefix(
                images, masks, tokens, tokens != pad_id, state=self.policy.prepare_state(batch))
            _, cache = self.policy.model.vlm_with_expert.forward(
                attention_mask=make_att_2d_masks(pad_masks, att_masks), position_ids=torch.cumsum(pad_masks, 1) - 1,
                past_key_values=None, inputs_embeds=[embs, None], use_cache=True)
            prefix_kv = torch.stack([torch.stack([keys, values], dim=1) for keys, values, *_ in cache], dim=1)
            return prefix_kv, pad_masks

    class Sampler(nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, prefix_kv, prefix_mask, noise, *rtc):
            n = noise.shape[0]
            kv = prefix_kv.expand(n, *prefix_kv.shape[1:])
            cache = DynamicCache(tuple((kv[:, i, 0], kv[:, i, 1], None) for i in range(kv.shape[1])))
            mask = prefix_mask.expand(n, prefix_mask.shape[1])
            captured = []
            hook = self.policy.model.action_out_proj.register_forward_pre_hook(
                lambda module, args: captured.append(args[0].mean(dim=1)))
            try:
                x = euler_integrate(rtc_guided(lambda x_t, t: self.policy.model.denoise_step(
                    prefix_pad_masks=mask, past_key_values=cache, x_t=x_t, timestep=t), rtc), noise, int(cfg.num_steps))
            finally:
                hook.remove()
            return x[:, :, :len(names["action"])], captured[-1]

    images, state = _example_observation(ck, names)
    tokens = torch.full((1, text.max_length), pad_id, dtype=torch.long)
    tokens[0, :3] = torch.tensor([i for i in range(4) if i != pad_id][:3])  # a short prompt, then padding
    return Plan(
        kind="flow", encoder=Encoder(), encoder_args=(*images, state, tokens),
        encoder_inputs=[*(f"image_{c}" for c, _ in ck.cameras), "state", "tokens"],
        prefix=("prefix_kv", "prefix_mask"), sampler=Sampler(),
        noise_shape=(int(cfg.chunk_size), int(cfg.max_action_dim)), step_noise=False,
        chunk_length=int(cfg.chunk_size), num_steps=int(cfg.num_steps),
        feature_dim=int(model.action_out_proj.in_features),
        feature_description="action expert output (the input of action_out_proj) averaged over the chunk's "
                            "action tokens at the final flow step",
        history=1, tokenizer=text, files={text.file: text.folder}, image_resize="pad_left_top", rtc=True)


def _text_tokenizer(ck: Checkpoint, folder: str | Path | None, prompt: str, paddings=("max_length",)):
    """The bundle's tokenizer from a local tokenizer folder, checked against the checkpoint's tokenizer step."""
    from policies.tokenizer import TextTokenizer

    step = _step(ck.pre_steps, "tokenizer_processor", "policy_preprocessor.json")["config"]
    if folder is None:
        raise ImportRefused("tokenizer", f"the checkpoint names {step.get('tokenizer_name')!r}, which is not "
                                         f"downloaded: pass --tokenizer DIR (a folder with its tokenizer.json)")
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ImportRefused("tokenizer", f"{folder} has no tokenizer.json")
    # Padding to the longest prompt of a batch and to max_length give the same actions (padding is masked).
    if step.get("padding") not in paddings or step.get("padding_side", "right") != "right":
        raise ImportRefused("policy_preprocessor.json.tokenizer_processor",
                            f"padding {step.get('padding')!r} on the {step.get('padding_side')!r}: only right "
                            f"padding ({' or '.join(paddings)}) is supported")
    config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = require("tokenizers").Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(pad or "<pad>")
    if pad_id is None:
        raise ImportRefused("tokenizer", f"{folder} defines no pad token")
    # `folder` here is the source file, copied into the bundle as tokenizer.json.
    return TextTokenizer(file="tokenizer.json", max_length=int(step["max_length"]), pad_id=int(pad_id),
                         prompt=prompt, folder=str(folder / "tokenizer.json"))


@contextlib.contextmanager
def _replayed_step_noise(step_noise):
    """DDPM's per-step noise taken from `step_noise[k]` instead of torch's global generator."""
    if step_noise is None:
        yield
        return
    import diffusers.schedulers.scheduling_ddpm as ddpm

    draws = iter(range(step_noise.shape[0]))
    original = ddpm.randn_tensor
    ddpm.randn_tensor = lambda shape, **kwargs: step_noise[next(draws)]
    try:
        yield
    finally:
        ddpm.randn_tensor = original


# ------------------------------------------------------------------------------------------------
# The bundle.

@dataclass
class Plan:
    """A family's two graphs, example inputs to trace them with, and what the manifest says of them."""

    kind: str
    encoder: object
    # Example encoder inputs (batch 1), in the order of `encoder_inputs`.
    encoder_args: tuple
    encoder_inputs: list[str]
    # The encoder's outputs, which the sampler takes first and by these names.
    prefix: tuple[str, ...]
    sampler: object
    # [Hn, D] of one candidate's noise.
    noise_shape: tuple[int, int]
    step_noise: bool
    chunk_length: int
    num_steps: int
    feature_dim: int
    feature_description: str
    history: int
    tokenizer: object
    # Bundle file name -> the file to copy in (the tokenizer).
    files: dict
    image_resize: str = "pad_center"
    source: dict | None = None
    # Whether the sampler takes real-time chunking inputs (RTC_INPUTS after its own): LeRobot gives RTC to
    # its flow VLAs (pi0, pi05, SmolVLA), not to diffusion.
    rtc: bool = False


def rtc_guided(denoise, rtc):
    """A velocity function (x_t, t[N]) -> v with real-time chunking: LeRobot 0.6.1's RTCProcessor.denoise_step,
    whose autograd "correction" is the identity (its v carries no graph), i.e. forward-only
    v - w(t) * W * (Y - (x_t - t v)). `rtc`: the graph's (target [1, Hn, D], weights [1, Hn], cap)."""
    from policies.models.policy import guided_velocity

    def guided(x_t, t):
        return guided_velocity(denoise(x_t, t), x_t, t[:1], rtc)

    return guided


def import_lerobot(checkpoint: str | Path, out: str | Path, *, joint_names: tuple[str, ...] | None = None,
                   fps: float | None = None, dataset: str | Path | None = None, tokenizer: str | Path | None = None,
                   name: str | None = None, overwrite: bool = False, external_data_above: int | None = None):
    """Imports a LeRobot checkpoint folder as a validated policy bundle at `out` (returned loaded).

    Joint names and the control rate come from `dataset` (a LeRobotDataset folder: meta/info.json) or from
    `joint_names` and `fps`; LeRobot checkpoints do not store them. `tokenizer`: a local folder with the
    tokenizer.json of the VLA's tokenizer (pi0 and pi05 name PaliGemma's, which is not downloaded).
    `external_data_above`: weights above this many bytes go to `<graph>.onnx.data` (default: 1.5 GB).
    """
    torch = require("torch")
    from policies.export import EXTERNAL_DATA_BYTES, OPSET, RTC_INPUTS, _export, rtc_example

    external = EXTERNAL_DATA_BYTES if external_data_above is None else external_data_above

    ck = read_checkpoint(checkpoint)
    names, rate = _names_and_rate(ck, joint_names, fps, dataset)
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    policy = build_policy(ck, vlm=tokenizer if ck.type == "smolvla" else None)
    if ck.type == "diffusion":
        plan = _diffusion_plan(policy, ck, names)
    elif ck.type == "smolvla":
        plan = _smolvla_plan(policy, ck, names, tokenizer or policy.config.vlm_model_name)
    else:
        plan = _pi_plan(policy, ck, names, tokenizer)
    facts = {"taco.kind": plan.kind, "taco.num_steps": str(plan.num_steps),
             "taco.chunk_length": str(plan.chunk_length), "taco.feature_dim": str(plan.feature_dim),
             "taco.source": f"lerobot {LEROBOT_VERSION} {ck.type}"}
    with staged_folder(out) as tmp:
        g = torch.Generator().manual_seed(0)
        n = 2
        noise = torch.randn(n, *plan.noise_shape, generator=g)
        with torch.no_grad(), _exportable(ck.type):
            prefix = plan.encoder(*plan.encoder_args)
            prefix = prefix if isinstance(prefix, tuple) else (prefix,)
            written = _export(plan.encoder, plan.encoder_args, tmp / "encoder.onnx", plan.encoder_inputs,
                              list(plan.prefix), {k: {0: "batch"} for k in [*plan.encoder_inputs, *plan.prefix]},
                              {"taco.graph": "encoder", **facts}, external)
            args, inputs = (*prefix, noise), [*plan.prefix, "noise"]
            axes = {"noise": {0: "n"}, "chunks": {0: "n"}, "features": {0: "n"}}
            if plan.step_noise:
                args += (torch.randn(plan.num_steps - 1, n, *plan.noise_shape, generator=g),)
                inputs.append("step_noise")
                axes["step_noise"] = {1: "n"}
            if plan.rtc:
                args += rtc_example(*plan.noise_shape)
                inputs += list(RTC_INPUTS)
            written += _export(plan.sampler, args, tmp / "sampler.onnx", inputs, ["chunks", "features"], axes,
                               {"taco.graph": "sampler", **facts}, external)
        for graph in ("encoder.onnx", "sampler.onnx"):
            _fp16_safe_masks(tmp / graph)
        for file, source in plan.files.items():
            shutil.copyfile(source, tmp / file)
        manifest = PolicyManifest(
            kind=plan.kind,
            name=name or out.name,
            cameras=tuple(CameraSpec(c, shape[1], shape[2]) for c, shape in ck.cameras),
            state_names=names["state"],
            action_names=names["action"],
            chunk_length=plan.chunk_length,
            num_steps=plan.num_steps,
            feature_dim=plan.feature_dim,
            feature_description=plan.feature_description,
            action_dt=1.0 / rate,
            sampler="unrolled",
            normalization=normalization(ck),
            tokenizer=plan.tokenizer,
            files=hash_files(tmp, [*written, *plan.files]),
            model_config={"lerobot_config": ck.config},
            provenance={"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "checkpoint": str(Path(checkpoint).resolve()), "torch": torch.__version__, "opset": OPSET},
            prefix=plan.prefix,
            noise_shape=plan.noise_shape,
            step_noise=plan.step_noise,
            history=plan.history,
            image_resize=plan.image_resize,
            rtc=plan.rtc,
            source={"framework": "lerobot", "version": LEROBOT_VERSION, "policy_type": ck.type,
                    "checkpoint_sha256": ck.weights_sha256, "normalization": dict(ck.norm_map),
                    **(plan.source or {})},
        )
        write_manifest(tmp, manifest)
    return load_policy_bundle(out)


@contextlib.contextmanager
def _exportable(kind: str):
    """Export-time fixes that leave LeRobot's code as it is:

    - ONNX's CumSum takes no booleans, and LeRobot takes cumulative sums of boolean masks: cast to int64;
    - SmolVLM's vision tower: `create_bidirectional_mask` mistakes the traced length for a cache position
      (LeRobot never masks patches), and its position ids come from bucketize and a boolean scatter that
      do not export; for a full image (always, after LeRobot's resize with padding) they are 0..patches-1;
    - the VLAs' time embedding is computed in float64 from each step's (constant) time: it is computed
      here instead, in float64 as LeRobot does, and enters the graph as the float32 constant LeRobot casts
      it to, so the sampler holds no float64 node (TensorRT has none).
    """
    require("torch")
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    def cumsum(g, x, dim, dtype):
        if x.type().scalarType() == "Bool":
            x = g.op("Cast", x, to_i=7)  # INT64
        return g.op("CumSum", x, dim)

    register_custom_op_symbolic("aten::cumsum", cumsum, 11)
    patches = []
    if kind == "smolvla":
        import transformers.models.smolvlm.modeling_smolvlm as smolvlm

        def embeddings(self, pixel_values, patch_attention_mask):
            patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
            return patches + self.position_embedding.weight[: patches.shape[1]]

        patches = [(smolvlm, "create_bidirectional_mask", lambda **kwargs: None),
                   (smolvlm.SmolVLMVisionEmbeddings, "forward", embeddings)]
    if kind in ("pi0", "pi05", "smolvla"):
        import importlib

        module = importlib.import_module(f"lerobot.policies.{kind}.modeling_{kind}")
        patches.append((module, "create_sinusoidal_pos_embedding",
                        _constant_time_embedding(module.create_sinusoidal_pos_embedding)))
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, value in patches:
        setattr(owner, attr, value)
    try:
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)
        unregister_custom_op_symbolic("aten::cumsum", 11)


def _names_and_rate(ck: Checkpoint, joint_names, fps, dataset) -> tuple[dict[str, tuple[str, ...]], float]:
    state_dim = int(np.prod(ck.config["input_features"][STATE_KEY]["shape"]))
    action_dim = int(np.prod(ck.config["output_features"][ACTION_KEY]["shape"]))
    names: dict[str, tuple[str, ...]] = {}
    if dataset is not None:
        info = _read_json(Path(dataset) / "meta" / "info.json", "dataset meta/info.json")
        features = info.get("features", {})
        for key, which in ((STATE_KEY, "state"), (ACTION_KEY, "action")):
            got = features.get(key, {}).get("names")
            if isinstance(got, dict):  # {"motors": [...]} in some datasets
                got = next(iter(got.values()))
            if not got:
                raise ImportRefused(f"dataset.features.{key}.names", "missing; pass --joint-names instead")
            names[which] = tuple(got)
        fps = fps or info.get("fps")
    elif joint_names is not None:
        names = {"state": tuple(joint_names), "action": tuple(joint_names)}
    else:
        raise ImportRefused("joint names", "LeRobot checkpoints do not store them: pass --dataset DIR (the dataset "
                                           "it was trained on) or --joint-names")
    for which, dim in (("state", state_dim), ("action", action_dim)):
        if len(names[which]) != dim:
            raise ImportRefused(f"{which} names", f"{len(names[which])} given, the policy's {which} has {dim} entries")
    if not fps or fps <= 0:
        raise ImportRefused("fps", "unknown control rate: pass --fps or --dataset")
    return names, float(fps)
