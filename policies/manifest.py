"""The policy bundle manifest: what a bundle's ONNX graphs expect and produce.

A policy bundle is a folder holding `manifest.json` and the ONNX files it lists:

- `encoder.onnx`: called once per control step.
  inputs  `image_<camera>: float32[B, 3, H, W]` (normalised), `state: float32[B, S]` (normalised),
          `tokens: int64[B, L]`;
  outputs `prefix_kv: float32[B, layers, 2, heads, P, head_dim]`, `prefix_bias: float32[B, P]`
          (0 for real prefix tokens, a large negative number for padding).
- sampler `unrolled` -> `sampler.onnx`: all denoising steps in one graph.
  inputs  `prefix_kv` and `prefix_bias` with B = 1, `noise: float32[N, H, A]`;
  outputs `chunks: float32[N, H, A]` (normalised), `features: float32[N, F]`.
- sampler `stepped` -> `step.onnx`: one denoising step, driven by the runtime for k = 0..num_steps-1.
  inputs  `prefix_kv`, `prefix_bias`, `x: float32[N, H, A]`, `step: int64[]`;
  outputs `x_next: float32[N, H, A]`, `features: float32[N, F]`.

Schema 2 (bundles imported from other frameworks, e.g. `taco import lerobot`) generalises three things,
each with schema 1's meaning as its default:

- `prefix`: the names of the encoder outputs the sampler takes, passed by name (a KV cache with its
  mask, or one conditioning vector `global_cond: float32[B, D]`);
- `noise`: the shape one candidate's noise has, `[Hn, D]`, which may differ from the chunk `[H, A]` the
  sampler returns (VLAs sample 32-wide padded noise; a diffusion policy samples `horizon` steps and
  returns the `H` it executes), and whether the sampler also takes `step_noise: float32[S-1, N, Hn, D]`
  (DDPM's fresh noise at every step but the last);
- `history`: observations per encoder call; above 1 the encoder's image and state inputs gain a time
  axis after the batch (`float32[B, T, 3, H, W]`, `float32[B, T, S]`, oldest first);
- `tokenizer` may be `{"type": "none"}`: no instruction, no `tokens` input;
- `image.resize`: `pad_center` (schema 1) or `pad_left_top`;
- `source`: where the weights come from (framework, version, policy type, checkpoint checksum);
- `rtc` (written only when true): the sampler takes real-time chunking inputs `rtc_target: float32[1 or N,
  Hn, D]` (the previous chunk re-indexed to the observation's time, normalised, zero-padded),
  `rtc_weights: float32[1 or N, Hn]` and `rtc_max_weight: float32[]` (policies.models.policy); all-zero
  weights compute what the sampler computes without them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from policies.errors import BundleError
from policies.schema import Reader, canonical_hash, portable
from policies.tokenizer import PROMPTS, ByteTokenizer, NoTokenizer, TextTokenizer

SCHEMA_VERSION = 2
# Schema versions this runtime reads; schema 1 bundles load unchanged (and keep their fingerprint).
SCHEMA_VERSIONS = (1, 2)
# Schema 1's sampler prefix: a KV cache and the additive attention bias of its padding.
KV_PREFIX = ("prefix_kv", "prefix_bias")
IMAGE_RESIZE = ("pad_center", "pad_left_top")
POLICY_KINDS = ("flow", "diffusion")
SAMPLER_MODES = ("unrolled", "stepped")
SAMPLER_FILES = {"unrolled": "sampler.onnx", "stepped": "step.onnx"}

# ALOHA convention: 6 arm joints + gripper, left arm then right arm.
ALOHA_JOINTS = tuple(
    f"{side}_{joint}"
    for side in ("left", "right")
    for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
)

# Verifier features a policy can export (PolicyConfig.feature), each as its manifest describes it.
FEATURES = {
    "first_token": "action expert last-layer output (after the final layer norm) at the first action token, "
                   "at the final denoising step",
    "mean_tokens": "action expert last-layer output (after the final layer norm) averaged over the chunk's "
                   "action tokens, at the final denoising step",
}
# What bundles exported before PolicyConfig.feature existed carry.
FEATURE_DESCRIPTION = FEATURES["first_token"]


@dataclass(frozen=True)
class CameraSpec:
    # Camera name as robots publish it, e.g. "cam_high".
    name: str
    # Image height the encoder takes, pixels.
    height: int
    # Image width the encoder takes, pixels.
    width: int


@dataclass(frozen=True)
class Normalization:
    """Statistics that map robot units to the model's normalised space: (x - mean) / std."""

    # float[S]: state mean, robot units (radians for joints, normalised gripper opening).
    state_mean: tuple[float, ...]
    # float[S]: state standard deviation, robot units, > 0.
    state_std: tuple[float, ...]
    # float[A]: action mean, robot units.
    action_mean: tuple[float, ...]
    # float[A]: action standard deviation, robot units, > 0.
    action_std: tuple[float, ...]
    # float[3]: per-channel RGB mean of images scaled to [0, 1].
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    # float[3]: per-channel RGB std of images scaled to [0, 1], > 0.
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def identity(cls, state_dim: int, action_dim: int) -> Normalization:
        return cls((0.0,) * state_dim, (1.0,) * state_dim, (0.0,) * action_dim, (1.0,) * action_dim)

    def to_dict(self) -> dict:
        return {
            "state": {"mean": list(self.state_mean), "std": list(self.state_std)},
            "action": {"mean": list(self.action_mean), "std": list(self.action_std)},
            "image": {"mean": list(self.image_mean), "std": list(self.image_std)},
        }

    @classmethod
    def read(cls, r: Reader, state_dim: int, action_dim: int) -> Normalization:
        state, action, image = r.obj("state"), r.obj("action"), r.obj("image")
        out = cls(
            state_mean=state.floats("mean", state_dim),
            state_std=state.floats("std", state_dim, positive=True),
            action_mean=action.floats("mean", action_dim),
            action_std=action.floats("std", action_dim, positive=True),
            image_mean=image.floats("mean", 3),
            image_std=image.floats("std", 3, positive=True),
        )
        for sub in (state, action, image, r):
            sub.finish()
        return out


@dataclass(frozen=True)
class PolicyManifest:
    """Everything the runtime needs to feed a policy bundle and read its outputs."""

    # "flow" (Euler integration of a velocity field) or "diffusion" (DDIM on an epsilon model).
    kind: str
    # Human-readable bundle name.
    name: str
    # Cameras the encoder takes, in input order.
    cameras: tuple[CameraSpec, ...]
    # Names of the S state entries, in order (joint names; left arm then right arm).
    state_names: tuple[str, ...]
    # Names of the A action entries, in order.
    action_names: tuple[str, ...]
    # H: actions per chunk.
    chunk_length: int
    # Denoising steps per sample.
    num_steps: int
    # F: size of the per-candidate verifier feature.
    feature_dim: int
    # Seconds between consecutive actions of a chunk (0.02 at 50 Hz).
    action_dt: float
    # How the denoising loop is run: "unrolled" in one graph, or "stepped" by the runtime.
    sampler: str
    normalization: Normalization
    tokenizer: ByteTokenizer | NoTokenizer | TextTokenizer
    # File name -> sha256 of every ONNX file of the bundle.
    files: dict[str, str]
    # What the verifier feature is.
    feature_description: str = FEATURE_DESCRIPTION
    # The model's construction settings, for reference and for re-export.
    model_config: dict = field(default_factory=dict)
    # How the bundle was made: command line, dataset fingerprint, versions. Not part of the fingerprint.
    provenance: dict = field(default_factory=dict)
    # Schema 2 (see the module docstring); their defaults are schema 1's meaning.
    # Names of the encoder outputs the sampler takes.
    prefix: tuple[str, ...] = KV_PREFIX
    # [Hn, D]: one candidate's noise; None: [chunk_length, action_dim].
    noise_shape: tuple[int, int] | None = None
    # Whether the sampler takes DDPM's per-step noise `step_noise: float32[S-1, N, Hn, D]`.
    step_noise: bool = False
    # Observations per encoder call (the current one and history - 1 before it, one control step apart).
    history: int = 1
    # How camera images are fitted to the encoder's size: keep the aspect ratio and pad, centred or at the
    # left/top.
    image_resize: str = "pad_center"
    # Where the weights come from: framework, version, policy type, checkpoint checksum. In the fingerprint.
    source: dict = field(default_factory=dict)
    # Whether the sampler takes real-time chunking guidance inputs (see the module docstring).
    rtc: bool = False
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise BundleError("kind", f"must be one of {', '.join(POLICY_KINDS)}; got {self.kind!r}")
        if self.sampler not in SAMPLER_MODES:
            raise BundleError("sampler", f"must be one of {', '.join(SAMPLER_MODES)}; got {self.sampler!r}")
        needed = {"encoder.onnx", SAMPLER_FILES[self.sampler]}
        missing = needed - set(self.files)
        if missing:
            raise BundleError(f"files.{sorted(missing)[0]}", f"required by sampler {self.sampler!r}, not listed")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise BundleError("cameras", f"camera names must be unique, got {names}")
        schema2 = (self.prefix != KV_PREFIX or self.noise_dims != (self.chunk_length, self.action_dim)
                   or self.step_noise or self.history != 1 or self.image_resize != "pad_center" or self.source
                   or not isinstance(self.tokenizer, ByteTokenizer))
        if self.schema_version == 1 and schema2:
            raise BundleError("schema_version", "prefix, noise, history, image, source and a tokenizer of type "
                                                "'none' need schema_version 2")
        if self.history < 1:
            raise BundleError("history", f"must be >= 1, got {self.history}")
        if self.image_resize not in IMAGE_RESIZE:
            raise BundleError("image.resize", f"must be one of {', '.join(IMAGE_RESIZE)}; got {self.image_resize!r}")
        if isinstance(self.tokenizer, TextTokenizer) and self.tokenizer.file not in self.files:
            raise BundleError("tokenizer.file", f"{self.tokenizer.file!r} is not among the bundle's files")
        if self.step_noise and self.sampler != "unrolled":
            raise BundleError("noise.step_noise", "per-step noise needs the unrolled sampler")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @property
    def sampler_file(self) -> str:
        return SAMPLER_FILES[self.sampler]

    @property
    def noise_dims(self) -> tuple[int, int]:
        """[Hn, D]: the shape of one candidate's noise."""
        return self.noise_shape or (self.chunk_length, self.action_dim)

    @property
    def fingerprint(self) -> str:
        """sha256 over everything that changes what the bundle computes (all but provenance)."""
        data = self.to_dict()
        data.pop("provenance")
        data.pop("name")
        return canonical_hash(data)

    def to_dict(self) -> dict:
        data = {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "name": self.name,
            "cameras": [asdict(c) for c in self.cameras],
            "state": {"names": list(self.state_names)},
            "action": {"names": list(self.action_names)},
            "chunk_length": self.chunk_length,
            "num_steps": self.num_steps,
            "action_dt": self.action_dt,
            "feature": {"dim": self.feature_dim, "description": self.feature_description},
            "sampler": self.sampler,
            "normalization": self.normalization.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "files": dict(sorted(self.files.items())),
            "model_config": self.model_config,
            "provenance": portable(self.provenance),
        }
        if self.schema_version == 1:
            return data  # exactly schema 1's fields, so a schema 1 bundle keeps its fingerprint
        data = {**data, "prefix": list(self.prefix),
                "noise": {"shape": list(self.noise_dims), "step_noise": self.step_noise},
                "history": self.history, "image": {"resize": self.image_resize}, "source": self.source}
        # Written only when true, so bundles made before RTC keep their fingerprints.
        return {**data, "rtc": True} if self.rtc else data

    @classmethod
    def from_dict(cls, data: dict) -> PolicyManifest:
        """Validates a manifest; raises BundleError naming the first bad field."""
        r = Reader(data, "")
        version = r.int("schema_version")
        if version not in SCHEMA_VERSIONS:
            raise BundleError("schema_version", f"this runtime reads versions {', '.join(map(str, SCHEMA_VERSIONS))}, "
                                                f"got {version}; re-export or re-import the bundle with this version")
        cameras = []
        for c in r.list("cameras"):
            cameras.append(CameraSpec(c.str("name"), c.int("height", minimum=1), c.int("width", minimum=1)))
            c.finish()
        state, action, feature, tok = r.obj("state"), r.obj("action"), r.obj("feature"), r.obj("tokenizer")
        state_names, action_names = state.strs("names"), action.strs("names")
        files_r = r.obj("files")
        files = {}
        for name in files_r.data:
            value = files_r.str(name)
            if len(value) != 64 or any(ch not in "0123456789abcdef" for ch in value):
                raise BundleError(f"files.{name}", "expected a sha256 hex digest")
            files[name] = value
        kind = tok.str("type", choices=("bytes", "none", "text") if version >= 2 else ("bytes",))
        if kind == "bytes":
            tokenizer = ByteTokenizer(max_length=tok.int("max_length", minimum=3))
        elif kind == "text":
            tokenizer = TextTokenizer(file=tok.str("file"), max_length=tok.int("max_length", minimum=1),
                                      pad_id=tok.int("pad_id", minimum=0), prompt=tok.str("prompt", choices=PROMPTS))
        else:
            tokenizer = NoTokenizer()
        v2 = {}
        if version >= 2:
            noise, image = r.obj("noise"), r.obj("image")
            shape = noise.raw("shape")
            if (not isinstance(shape, list) or len(shape) != 2
                    or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):
                raise BundleError("noise.shape", f"expected [steps, width], two positive integers, got {shape!r}")
            prefix = r.strs("prefix")
            if not prefix:
                raise BundleError("prefix", "expected the names of one or more encoder outputs")
            source = r.raw("source", {})
            if not isinstance(source, dict):
                raise BundleError("source", f"expected an object, got {source!r}")
            rtc = r.raw("rtc", False)
            if not isinstance(rtc, bool):
                raise BundleError("rtc", f"expected true or false, got {rtc!r}")
            v2 = dict(prefix=prefix, noise_shape=tuple(shape), step_noise=bool(noise.raw("step_noise", False)),
                      history=r.int("history", minimum=1), image_resize=image.str("resize", choices=IMAGE_RESIZE),
                      source=source, rtc=rtc)
            noise.finish()
            image.finish()
        manifest = cls(
            kind=r.str("kind", choices=POLICY_KINDS),
            name=r.str("name"),
            cameras=tuple(cameras),
            state_names=state_names,
            action_names=action_names,
            chunk_length=r.int("chunk_length", minimum=1),
            num_steps=r.int("num_steps", minimum=1),
            feature_dim=feature.int("dim", minimum=1),
            feature_description=feature.str("description"),
            action_dt=r.float("action_dt", positive=True),
            sampler=r.str("sampler", choices=SAMPLER_MODES),
            normalization=Normalization.read(r.obj("normalization"), len(state_names), len(action_names)),
            tokenizer=tokenizer,
            files=files,
            model_config=r.raw("model_config", {}),
            provenance=r.raw("provenance", {}),
            schema_version=version,
            **v2,
        )
        for sub in (state, action, feature, tok, r):
            sub.finish()
        return manifest

