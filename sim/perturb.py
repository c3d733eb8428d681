"""Scenes the policy never saw, for evaluation only: `taco eval --scene-perturb KIND[:LEVEL]`.

Each perturbation changes what the cameras see or where the objects start, never the physics the task's
stages read, so an episode's success still means the same thing. What changes per episode (a camera's
displacement, a distractor's place, an object's start) is drawn from the episode's seed (with a salt of
its own), so every arm of a comparison meets the same perturbed scene.

| kind | LEVEL (default) | what |
|---|---|---|
| `lighting` | 0.35 | every light's (and the headlight's) intensity times LEVEL: below 1 darker, above brighter |
| `camera` | 0.04 | each camera moved LEVEL m in a seeded direction; the fixed ones (not on a wrist) also turned by 1.5 x LEVEL rad about a seeded axis |
| `distractor` | 2 | LEVEL boxes of colours the training scenes never had, on the table away from the objects (seen, not touched) |
| `object_range` | 0.08 | each object starts outside its training spawn box, inside that box widened by LEVEL m |
| `table` | 0.8 | the table's grey blended toward blue by LEVEL (1: all blue) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# kind -> (default level, (lowest, highest) level accepted).
KINDS = {
    "lighting": (0.35, (0.0, 10.0)),
    "camera": (0.04, (0.0, 0.3)),
    "distractor": (2.0, (1.0, 6.0)),
    "object_range": (0.08, (0.01, 0.3)),
    "table": (0.8, (0.0, 1.0)),
}
# Salt of the per-episode draws, so they do not repeat the episode's own draws from its seed.
SALT = 0x5CE7E
# Distractor colours: none of the scenes' own (red cube, green bar, the arms' greys).
COLOURS = ((0.1, 0.3, 0.9, 1.0), (0.95, 0.85, 0.1, 1.0), (0.6, 0.2, 0.8, 1.0), (0.1, 0.8, 0.8, 1.0),
           (1.0, 0.5, 0.0, 1.0), (0.95, 0.95, 0.95, 1.0))
DISTRACTOR_HALF = 0.02
TABLE_BLUE = np.array([0.15, 0.25, 0.65])
# Where distractors go on the table (x, y), and how far from any object's start.
TABLE_AREA = ((-0.3, 0.35), (0.3, 0.75))
CLEARANCE = 0.09


@dataclass(frozen=True)
class ScenePerturbation:
    kind: str
    level: float

    @classmethod
    def parse(cls, text: str) -> ScenePerturbation:
        """'KIND' or 'KIND:LEVEL'; refuses an unknown kind or a level out of range, naming them."""
        kind, _, level = str(text).partition(":")
        if kind not in KINDS:
            raise ValueError(f"scene_perturb: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        default, (low, high) = KINDS[kind]
        try:
            value = float(level) if level else default
        except ValueError:
            raise ValueError(f"scene_perturb: {kind}'s level must be a number, got {level!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"scene_perturb: {kind}'s level must be in [{low:g}, {high:g}], got {value:g}")
        if kind == "distractor" and value != int(value):
            raise ValueError(f"scene_perturb: distractor's level is a number of objects, got {value:g}")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.level:g}"


def parse_all(texts) -> tuple[ScenePerturbation, ...]:
    """Each text parsed; one perturbation per kind."""
    out = tuple(ScenePerturbation.parse(t) for t in texts)
    kinds = [p.kind for p in out]
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"scene_perturb: one of each kind, got {', '.join(kinds)}")
    return out


class PerturbedScene:
    """The perturbations of one environment: edits its model spec before compiling (`edit`), its model once
    compiled (`apply`), and each episode's start (`reset`)."""

    def __init__(self, perturbations: tuple[ScenePerturbation, ...]):
        self.by_kind = {p.kind: p.level for p in perturbations}
        self.distractors = int(self.by_kind.get("distractor", 0))
        self._cameras = None

    @property
    def edit(self):
        """The MjSpec edit that adds the distractors (None when there are none)."""
        if not self.distractors:
            return None

        def add(spec):
            import mujoco

            for i in range(self.distractors):
                body = spec.worldbody.add_body(name=f"distractor{i}", pos=[0.0, 0.0, -1.0])
                body.add_geom(name=f"distractor{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[DISTRACTOR_HALF] * 3,
                              rgba=list(COLOURS[i % len(COLOURS)]), contype=0, conaffinity=0)
        return add

    def apply(self, model) -> None:
        """The episode-independent changes: lights and the table's colour; remembers the cameras' poses."""
        import mujoco

        if "lighting" in self.by_kind:
            k = self.by_kind["lighting"]
            model.light_diffuse[:] = np.clip(model.light_diffuse * k, 0.0, 1.0)
            model.light_specular[:] = np.clip(model.light_specular * k, 0.0, 1.0)
            model.light_ambient[:] = np.clip(model.light_ambient * k, 0.0, 1.0)
            model.vis.headlight.diffuse[:] = np.clip(np.asarray(model.vis.headlight.diffuse) * k, 0.0, 1.0)
            model.vis.headlight.ambient[:] = np.clip(np.asarray(model.vis.headlight.ambient) * k, 0.0, 1.0)
        if "table" in self.by_kind:
            table = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "table")
            k = self.by_kind["table"]
            model.geom_rgba[table, :3] = (1 - k) * model.geom_rgba[table, :3] + k * TABLE_BLUE
            if model.geom_matid[table] >= 0:  # a material's colour would win over the geom's
                model.geom_matid[table] = -1
        if "camera" in self.by_kind:
            # The scene's cameras look at a target body; a fixed camera moved a few cm keeps its orientation
            # (the look-at of one straight above the table would roll the image instead). Those on the world
            # body become fixed at the orientation they had; the wrist cameras keep following their target.
            data = mujoco.MjData(model)
            mujoco.mj_forward(model, data)
            for c in range(model.ncam):
                if model.cam_bodyid[c] == 0:
                    quat = np.empty(4)
                    mujoco.mju_mat2Quat(quat, data.cam_xmat[c])
                    model.cam_quat[c] = quat
                    model.cam_mode[c] = mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        self._cameras = (model.cam_pos.copy(), model.cam_quat.copy())

    def reset(self, model, seed: int, objects: np.ndarray, spawn) -> np.ndarray:
        """One episode's draws (from `seed` and SALT): cameras, distractors, and the objects' starts (returned,
        replaced when `object_range`; `spawn` is the task's training boxes)."""
        import mujoco

        rng = np.random.default_rng([int(seed), SALT])
        if "camera" in self.by_kind:
            level = self.by_kind["camera"]
            base_pos, base_quat = self._cameras
            for c in range(model.ncam):
                direction = _unit(rng.standard_normal(3))
                axis = _unit(rng.standard_normal(3))
                model.cam_pos[c] = base_pos[c] + level * direction
                if model.cam_mode[c] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
                    continue  # a wrist camera: it still looks at its target
                turn = np.empty(4)
                mujoco.mju_axisAngle2Quat(turn, axis, 1.5 * level)
                quat = np.empty(4)
                mujoco.mju_mulQuat(quat, turn, base_quat[c])
                model.cam_quat[c] = quat
        if "object_range" in self.by_kind:
            objects = objects.copy()
            for i, (low, high) in enumerate(spawn):
                objects[7 * i: 7 * i + 3] = _outside(rng, np.asarray(low, float), np.asarray(high, float),
                                                     self.by_kind["object_range"])
        placed = [objects[7 * j: 7 * j + 2] for j in range(len(objects) // 7)]
        for i in range(self.distractors):
            body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"distractor{i}")
            for _ in range(1000):
                xy = rng.uniform(*TABLE_AREA)
                if all(np.linalg.norm(xy - p) > CLEARANCE for p in placed):
                    break
            model.body_pos[body] = [xy[0], xy[1], DISTRACTOR_HALF]
            placed.append(xy)
        return objects


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def _outside(rng, low: np.ndarray, high: np.ndarray, margin: float) -> np.ndarray:
    """A point of the box widened by `margin` in x and y (z kept) that lies outside the box itself."""
    wide_low, wide_high = low.copy(), high.copy()
    wide_low[:2] -= margin
    wide_high[:2] += margin
    for _ in range(10_000):
        point = rng.uniform(wide_low, wide_high)
        if not np.all((point[:2] >= low[:2]) & (point[:2] <= high[:2])):
            return point
    raise RuntimeError("no start outside the training box was drawn")  # cannot happen with margin > 0
