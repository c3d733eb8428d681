"""Construction settings of the torch policy models (no torch import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from policies.manifest import ALOHA_JOINTS, FEATURES, POLICY_KINDS, CameraSpec


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes of a VLA-shaped chunk policy: a prefix encoder run once per step, an action expert run N x S times."""

    # "flow" or "diffusion".
    kind: str = "flow"
    # Cameras the encoder takes; each image must divide by `patch_size`.
    cameras: tuple[CameraSpec, ...] = (CameraSpec("cam_high", 96, 128),)
    # Names of state and action entries (their count is S and A).
    state_names: tuple[str, ...] = ALOHA_JOINTS
    action_names: tuple[str, ...] = ALOHA_JOINTS
    # H: actions per chunk.
    chunk_length: int = 16
    # Denoising steps per sample (flow Euler steps or DDIM steps).
    num_steps: int = 10
    # Seconds between actions of a chunk.
    action_dt: float = 0.02
    # Pixels per image token side (the conv stem's total stride; a multiple of 4).
    patch_size: int = 16
    # Spatial-softmax keypoints per camera (robomimic's and Diffusion Policy's image head): K heat maps
    # from a small conv net at stride 2, each reduced to its expected (x, y) and projected to one extra
    # prefix token per camera. A 3-pixel cube is one patch token among 48; a keypoint states where it is.
    # 0: none.
    keypoints: int = 0
    # Training only: control steps ahead at which a small head on the encoder predicts the robot's state
    # (an auxiliary loss; the head is not exported). A 16-step chunk barely depends on where the object
    # is once the arm moves, since the motion so far already points there, so the denoising loss alone
    # never teaches the encoder to look; where the arm will be 1-3 s from now depends on it throughout
    # the approach. Empty: no such head.
    future_steps: tuple[int, ...] = ()
    # Weight of that loss next to the denoising loss (both are MSEs in normalised units).
    future_weight: float = 1.0
    # Width, depth and heads of the prefix encoder ("the VLM").
    enc_dim: int = 256
    enc_layers: int = 4
    enc_heads: int = 4
    # Width, depth and heads of the action expert; expert_dim is also the verifier feature size F.
    # The expert runs N x S times per step and the encoder once, so the expert is kept small (as pi0's
    # action expert is next to its VLM); these sizes hold N=16 under 3x the latency of N=1 on one CPU thread.
    expert_dim: int = 96
    expert_layers: int = 2
    expert_heads: int = 4
    # Hidden width of the expert's MLP as a multiple of expert_dim.
    expert_mlp_ratio: int = 2
    # Tokens per task instruction.
    max_text_len: int = 32
    # Which expert output, at the final denoising step, is each candidate's verifier feature (see
    # FEATURES in policies.manifest): "mean_tokens" averages the last-layer output over the chunk's H
    # tokens; "first_token" takes the first action token's, as TACO's reference does for pi0.5.
    feature: str = "mean_tokens"
    # Diffusion only: training timesteps of the cosine noise schedule.
    diffusion_train_steps: int = 100
    # Diffusion only: the DDIM x0 estimate is clipped to +-this, in normalised action units.
    diffusion_clip: float = 5.0
    # Free-form extra settings recorded with the model.
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(POLICY_KINDS)}, got {self.kind!r}")
        if self.patch_size % 4:
            raise ValueError(f"patch_size: must be a multiple of 4, got {self.patch_size}")
        for cam in self.cameras:
            if cam.height % self.patch_size or cam.width % self.patch_size:
                raise ValueError(f"cameras[{cam.name!r}]: {cam.height}x{cam.width} does not divide by patch_size {self.patch_size}")
        for name in ("enc", "expert"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads:
                raise ValueError(f"{name}_dim: {dim} does not divide by {name}_heads {heads}")
        if any(k < 1 for k in self.future_steps) or self.future_weight < 0:
            raise ValueError(f"future_steps: must be >= 1 and future_weight >= 0, got {self.future_steps} "
                             f"and {self.future_weight}")
        if self.keypoints < 0:
            raise ValueError(f"keypoints: must be >= 0, got {self.keypoints}")
        if self.feature not in FEATURES:
            raise ValueError(f"feature: must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if self.kind == "diffusion" and self.diffusion_train_steps % self.num_steps:
            raise ValueError(f"num_steps: {self.num_steps} must divide diffusion_train_steps {self.diffusion_train_steps}")

    @property
    def image_tokens(self) -> int:
        return sum((c.height // self.patch_size) * (c.width // self.patch_size) for c in self.cameras)

    @property
    def prefix_length(self) -> int:
        """P: image tokens (+ one keypoint token per camera) + one state token + text tokens."""
        return self.image_tokens + (len(self.cameras) if self.keypoints else 0) + 1 + self.max_text_len

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cameras"] = [asdict(c) for c in self.cameras]
        data["state_names"], data["action_names"] = list(self.state_names), list(self.action_names)
        data["future_steps"] = list(self.future_steps)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PolicyConfig:
        data = dict(data)
        data["cameras"] = tuple(CameraSpec(**c) for c in data["cameras"])
        data["state_names"], data["action_names"] = tuple(data["state_names"]), tuple(data["action_names"])
        data["future_steps"] = tuple(data.get("future_steps", ()))
        return cls(**data)


# Named sizes. "default" is what the benchmarks and shipped policies use; "tiny" keeps tests fast.
SIZES = {
    "default": PolicyConfig(keypoints=16, future_steps=(25, 50, 100, 150)),
    "tiny": PolicyConfig(
        cameras=(CameraSpec("cam_high", 32, 32),),
        chunk_length=8,
        num_steps=4,
        patch_size=8,
        keypoints=4,
        future_steps=(2, 4),
        enc_dim=32,
        enc_layers=1,
        enc_heads=2,
        expert_dim=32,
        expert_layers=2,
        expert_heads=2,
        max_text_len=16,
        diffusion_train_steps=20,
    ),
}


def make_config(size: str = "default", kind: str = "flow", **overrides) -> PolicyConfig:
    """The named size for a policy kind, with field overrides."""
    if size not in SIZES:
        raise ValueError(f"size: must be one of {', '.join(SIZES)}, got {size!r}")
    return replace(SIZES[size], kind=kind, **overrides)
