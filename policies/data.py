"""Training data: a LeRobotDataset v3 loaded into memory as per-episode arrays (needs the train extra).

Videos are decoded once per episode (sequentially, not one seek per sample) and the arrays cached
next to the dataset in `cache/taco_arrays-<fingerprint>.npz`, so later runs start in seconds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policies.extras import require
from policies.manifest import CameraSpec, Normalization
from policies.observation import Observation

IMAGE_PREFIX = "observation.images."
# Seconds a decoded frame's timestamp may differ from the one asked for (LeRobotDataset's default).
VIDEO_TOLERANCE_S = 1e-4


@dataclass
class Episode:
    # Camera name -> uint8[T, H, W, 3].
    images: dict[str, np.ndarray]
    # float32[T, S] robot units.
    state: np.ndarray
    # float32[T, A] robot units.
    action: np.ndarray
    # The episode's task instruction.
    task: str
    index: int

    def __len__(self) -> int:
        return len(self.state)

    def chunk(self, t: int, length: int) -> np.ndarray:
        """float32[length, A]: the recorded actions from frame t, past the end holding the last one."""
        return self.action[np.minimum(np.arange(t, t + length), len(self) - 1)]

    def observation(self, t: int, cameras) -> Observation:
        """Frame t as the runtime's Observation, with the images of `cameras` (names or specs with .name)."""
        names = [getattr(c, "name", c) for c in cameras]
        return Observation({n: self.images[n][t] for n in names}, self.state[t], self.task, 0.0)


@dataclass
class TrainingData:
    episodes: list[Episode]
    cameras: tuple[CameraSpec, ...]
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    fps: float
    # sha256 over the dataset's metadata and parquet files: recorded in the bundles trained on it.
    fingerprint: str

    def normalization(self, min_std: float = 1e-2) -> Normalization:
        """Mean/std of state and action over every frame; tiny stds are floored (constant joints)."""
        state = np.concatenate([e.state for e in self.episodes])
        action = np.concatenate([e.action for e in self.episodes])
        return Normalization(
            state_mean=tuple(map(float, state.mean(0))), state_std=tuple(map(float, np.maximum(state.std(0), min_std))),
            action_mean=tuple(map(float, action.mean(0))),
            action_std=tuple(map(float, np.maximum(action.std(0), min_std))),
        )


def dataset_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "meta" / "info.json", *sorted((root / "data").rglob("*.parquet")),
             *sorted((root / "meta" / "episodes").rglob("*.parquet"))]
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def load_dataset(root: str | Path, progress=None) -> TrainingData:
    """Loads every episode of a local LeRobotDataset v3 (ours, or any with matching features)."""
    require("lerobot")
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
    from lerobot.datasets.video_utils import decode_video_frames

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"dataset: {root} is not a LeRobotDataset (no meta/info.json)")
    info = json.loads((root / "meta" / "info.json").read_text())
    features = info["features"]
    for key in ("observation.state", "action"):
        if key not in features:
            raise ValueError(f"dataset: {root} has no {key!r} feature (has {', '.join(features)})")
    cam_keys = sorted(k for k in features if k.startswith(IMAGE_PREFIX))
    if not cam_keys:
        raise ValueError(f"dataset: {root} has no camera features ({IMAGE_PREFIX}*)")
    cameras = tuple(CameraSpec(k[len(IMAGE_PREFIX):], *features[k]["shape"][:2]) for k in cam_keys)
    fingerprint = dataset_fingerprint(root)
    state_names = tuple(features["observation.state"]["names"] or [f"s{i}" for i in range(features["observation.state"]["shape"][0])])
    action_names = tuple(features["action"]["names"] or [f"a{i}" for i in range(features["action"]["shape"][0])])
    cache = root / "cache" / f"taco_arrays-{fingerprint[:16]}.npz"
    meta = LeRobotDatasetMetadata(f"taco/{root.name}", root=root)
    tasks = {int(i): t for t, i in zip(meta.tasks.index, meta.tasks["task_index"])}
    columns = _read_columns(root, ("episode_index", "index", "observation.state", "action", "timestamp", "task_index"))
    episode_index = columns["episode_index"]
    state = columns["observation.state"].astype(np.float32)
    action = columns["action"].astype(np.float32)
    timestamps = columns["timestamp"].astype(np.float64)
    task_index = columns["task_index"]
    cached = dict(np.load(cache)) if cache.is_file() else {}
    episodes = []
    for ep in range(meta.total_episodes):
        rows = np.flatnonzero(episode_index == ep)
        images = {}
        for cam, key in zip(cameras, cam_keys):
            name = f"{ep}:{cam.name}"
            if name not in cached:
                start = float(meta.episodes[ep][f"videos/{key}/from_timestamp"])
                path = root / meta.get_video_file_path(ep, key)
                frames = decode_video_frames(path, [start + float(t) for t in timestamps[rows]], VIDEO_TOLERANCE_S,
                                             "pyav", return_uint8=True)
                cached[name] = frames.numpy().transpose(0, 2, 3, 1).copy()
            images[cam.name] = cached[name]
        episodes.append(Episode(images, state[rows], action[rows], tasks[int(task_index[rows[0]])], ep))
        if progress:
            progress(ep + 1, meta.total_episodes)
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **cached)
        tmp.replace(cache)
    return TrainingData(episodes, cameras, state_names, action_names, float(info["fps"]), fingerprint)


def _read_columns(root: Path, names) -> dict[str, np.ndarray]:
    """The named columns of every data parquet file, in the dataset's frame order (`index`).

    Read with pyarrow as whole arrays: going through the HF dataset converts list columns row by row,
    which took about 3 minutes for 130 000 frames.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"dataset: {root} has no data/*.parquet files")
    table = pa.concat_tables([pq.read_table(f, columns=list(names)) for f in files])
    out = {}
    for name in names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            width = len(column[0]) if len(column) else 0
            out[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), width)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    order = np.argsort(out["index"], kind="stable")
    return {name: values[order] for name, values in out.items()}
