"""Runtime failure monitor: per-decision signals, an episode statistic, a calibrated alarm.

A decision already holds what a monitor needs: N candidate chunks (their spread says how sure the
policy is), their features (a pseudo-count of the fine-tuning data says how familiar the observation
is; a value verifier predicts success), and the chunk before it (how much the policy changed its mind).
`Engine` computes the per-decision signals (`Monitor.decision_signals`, numpy and at most two small
verifier graphs); a `MonitorTrack`, one per episode, adds the consistency with the previous chunk,
standardises each signal against successful rollouts and accumulates a one-sided CUSUM, S_t =
max(0, S_{t-1} + c_t - k) over the mean c_t of the detector's standardised signals (OpenTau's `accel`
detector uses the same statistic). It alarms once S_t exceeds the threshold, a split-conformal quantile
of the CUSUM peaks of successful calibration rollouts (`conformal_threshold`): a successful episode like
those raises an alarm with probability at most `alpha`.

A monitor bundle (`taco calibrate-monitor`, `sim.calibrate_monitor`) is a folder: `manifest.json` (signals,
standardisation, detectors with their thresholds, provenance) and the verifier bundles it scores with, as
subfolders (`pseudocount/`, `value/`). It is bound to one policy, one N and one selection verifier: the
signals' distributions depend on all three, so a use with another is refused (`Monitor.check_use`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies.errors import BundleError
from policies.schema import Reader, canonical_hash, portable, read_manifest, sha256_file
from policies.velocities import roughness
from verifiers.base import score_candidates

MONITOR_SCHEMA_VERSION = 1

# Every signal a monitor can compute, with its direction: +1 when a larger value is more anomalous.
#   spread: mean over positions and joints of the candidates' standard deviation (normalised units), N >= 2.
#   keystone: |mean - medoid| / median pairwise distance of the candidates (KeyStone's spread), N >= 3.
#   pseudocount: the pseudo-count scorer's score of the chosen candidate (higher = more familiar).
#   pseudocount_obs: its score of the candidates' mean feature: how familiar the observation is, whatever the action.
#   value: the value scorer's predicted return of the chosen candidate.
#   inconsistency: RMS difference (robot units) between the chunk and the previous one where they overlap.
#   novelty: the observation's embedding (the encoder's prefix, pooled) against the successful rollouts'
#     ones, mean squared whitened coordinate on their principal components (a monitor with an embedding).
#   accel: the roughness of the flow sampler's own velocities along its Euler steps for the chosen candidate
#     (OpenTau's accel, policies.velocities.roughness; a monitor of a flow policy with `accel`).
SIGNALS: dict[str, int] = {"spread": +1, "keystone": +1, "pseudocount": -1, "pseudocount_obs": -1, "value": -1,
                           "inconsistency": +1, "novelty": +1, "accel": +1}
# The embedding model's file in a monitor bundle: mean[D], basis[k, D], scale[k].
EMBEDDING_FILE = "embedding.npz"
# Verifier roles a monitor may score with, and the signals each gives.
SCORERS: dict[str, tuple[str, ...]] = {"pseudocount": ("pseudocount", "pseudocount_obs"), "value": ("value",)}
# Standardised signals are clipped from below: a very familiar reading must not cancel another's alarm.
Z_FLOOR = -3.0


def signals_for(n: int, scorers, embedding: bool = False, accel: bool = False) -> tuple[str, ...]:
    """The signals a monitor with these scorer roles (and an embedding model, and the sampler's velocities)
    computes at N = n, in SIGNALS order."""
    names = {"inconsistency"} | {s for role in scorers for s in SCORERS[role]} | ({"novelty"} if embedding else set())
    if accel:
        names.add("accel")
    if n < 2:  # one candidate: its mean is itself, and nothing spreads
        names.discard("pseudocount_obs")
    if n >= 2:
        names.add("spread")
    if n >= 3:
        names.add("keystone")
    return tuple(s for s in SIGNALS if s in names)


def pooled_embedding(prefix: Mapping[str, np.ndarray], item: int = 0) -> np.ndarray:
    """float64[heads * head_dim]: the encoder's last-layer values, averaged over the observation's tokens (the
    prefix positions its attention bias does not mask): what the sampler reads of this observation."""
    values = np.asarray(prefix["prefix_kv"][item, -1, 1], np.float64)  # [heads, P, head_dim]
    valid = np.asarray(prefix["prefix_bias"][item]) > -1.0
    return values[:, valid].mean(axis=1).reshape(-1)


def fit_embedding(vectors: np.ndarray, components: int = 16) -> dict[str, np.ndarray]:
    """The embedding model of successful rollouts' pooled embeddings: their mean, top principal directions
    and the spread along each (floored, so a flat direction cannot make any change look infinitely novel)."""
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components, len(singular))
    scale = singular[:k] / np.sqrt(max(len(x) - 1, 1))
    scale = np.maximum(scale, 1e-3 * max(float(scale.max(initial=0.0)), 1e-12))
    return {"mean": mean, "basis": vt[:k], "scale": scale}


def novelty(model: Mapping[str, np.ndarray], vector: np.ndarray) -> float:
    """Mean squared whitened coordinate of `vector` on the model's principal directions (about 1 for an
    embedding like the successful rollouts')."""
    z = (model["basis"] @ (np.asarray(vector, np.float64) - model["mean"])) / model["scale"]
    return float(np.mean(z * z))


def candidate_spread(chunks: np.ndarray) -> float:
    """Mean over positions and joints of the standard deviation over candidates; NaN for fewer than 2."""
    if len(chunks) < 2:
        return math.nan
    return float(chunks.std(axis=0).mean())


def keystone_spread(chunks: np.ndarray) -> float:
    """|mean - medoid| / median pairwise distance of the candidates (flattened chunks); NaN for fewer than
    3, 0 when they all coincide."""
    m = len(chunks)
    if m < 3:
        return math.nan
    x = chunks.reshape(m, -1).astype(np.float64)
    sq = (x * x).sum(axis=1)
    distance = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    scale = float(np.median(distance[np.triu_indices(m, 1)]))
    if scale <= 0.0:
        return 0.0
    medoid = x[int(distance.sum(axis=1).argmin())]
    return float(np.linalg.norm(x.mean(axis=0) - medoid) / scale)


def chunk_inconsistency(chunk: np.ndarray, times: np.ndarray, previous: np.ndarray, previous_times: np.ndarray,
                        dt: float) -> float:
    """RMS over the positions both chunks cover (the same action time, within half a step) and over joints
    of their difference; NaN when they share no position."""
    j = np.rint((times - previous_times[0]) / dt).astype(np.int64)
    both = (j >= 0) & (j < len(previous)) & (np.abs(times - previous_times[np.clip(j, 0, len(previous) - 1)]) < dt / 2)
    if not both.any():
        return math.nan
    diff = chunk[both].astype(np.float64) - previous[j[both]]
    return float(np.sqrt(np.mean(diff * diff)))


def standardise(values: np.ndarray, name: str, mean: float, std: float) -> np.ndarray:
    """A signal's readings for the detectors: sign x (v - mean) / std, floored at Z_FLOOR, NaN kept."""
    z = SIGNALS[name] * (values - mean) / std
    return np.where(np.isnan(z), np.nan, np.maximum(z, Z_FLOOR))


def combined_reading(z: Mapping[str, np.ndarray], signals: tuple[str, ...]) -> np.ndarray:
    """Per decision, the mean of these signals' standardised readings that are not NaN (0 when none is)."""
    stack = np.stack([z[s] for s in signals])
    count = np.sum(~np.isnan(stack), axis=0)
    return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), 0.0)


def cusum(values: np.ndarray, slack: float) -> np.ndarray:
    """One-sided CUSUM S_t = max(0, S_{t-1} + c_t - slack), S_{-1} = 0; a NaN reading counts as 0."""
    out = np.empty(len(values))
    s = 0.0
    for t, c in enumerate(values):
        s = max(0.0, s + (0.0 if math.isnan(c) else float(c)) - slack)
        out[t] = s
    return out


def conformal_rank(m: int, alpha: float) -> int:
    """The split-conformal order statistic's rank, ceil((m + 1)(1 - alpha)); refuses an m too small."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a false-alarm rate in (0, 1), got {alpha}")
    rank = math.ceil((m + 1) * (1.0 - alpha) - 1e-9)
    if rank > m:
        need = math.ceil(1.0 / alpha - 1.0 - 1e-9)
        raise ValueError(f"alpha {alpha:g} needs at least {need} successful calibration rollouts, got {m}")
    return rank


def conformal_threshold(peaks, alpha: float) -> float:
    """The rank-ceil((m + 1)(1 - alpha)) smallest of m successful rollouts' CUSUM peaks: a new successful
    rollout's peak exceeds it with probability at most alpha (exchangeable rollouts)."""
    peaks = np.sort(np.asarray(peaks, np.float64))
    return float(peaks[conformal_rank(len(peaks), alpha) - 1])


# Detector kinds: "cusum" (the CUSUM of the mean of standardised signals), "any" (each signal's own CUSUM,
# each divided by its scale, the largest: an alarm once any one signal is out of its range, which no
# familiar-looking other signal can cancel) or "elapsed" (seconds since the episode's first decision: the
# baseline every monitor must beat, an alarm once an episode has run longer than successful ones do).
DETECTOR_KINDS = ("cusum", "any", "elapsed")


@dataclass(frozen=True)
class Detector:
    """One alarm rule: the mean of these standardised signals, CUSUM with `slack`, alarm above `threshold`
    (kind "cusum"); each signal's own CUSUM with its slack (`slacks`) over its scale (`scales`), the
    largest above `threshold` (kind "any"); or the episode's elapsed seconds above `threshold` (kind
    "elapsed")."""

    signals: tuple[str, ...]
    slack: float
    threshold: float
    alpha: float
    kind: str = "cusum"
    # Kind "any": per signal, its CUSUM's slack and the scale its statistic is divided by.
    slacks: tuple[float, ...] = ()
    scales: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "signals": list(self.signals), "slack": self.slack, "threshold": self.threshold,
               "alpha": self.alpha}
        if self.kind == "any":
            out.update(slacks=list(self.slacks), scales=list(self.scales))
        return out

    def path(self, z: Mapping[str, np.ndarray]) -> np.ndarray:
        """The statistic after each decision of an episode, from its standardised readings (kind "cusum"
        or "any"; NaN readings count as 0)."""
        if self.kind == "any":
            return np.max(np.stack([cusum(z[s], slack) / scale
                                    for s, slack, scale in zip(self.signals, self.slacks, self.scales)]), axis=0)
        return cusum(combined_reading(z, self.signals), self.slack)

    @classmethod
    def from_reader(cls, r: Reader, known: tuple[str, ...]) -> Detector:
        kind = r.str("kind", choices=DETECTOR_KINDS)
        signals = r.strs("signals")
        allowed = ("elapsed",) if kind == "elapsed" else known
        for name in signals:
            if name not in allowed:
                raise BundleError(f"{r.path}.signals", f"{name!r} is not one of this monitor's signals {list(allowed)}")
        if not signals:
            raise BundleError(f"{r.path}.signals", "empty")
        slack, alpha = r.float("slack"), r.float("alpha")
        if slack < 0 or not 0 < alpha < 1:
            raise BundleError(r.path, f"expected slack >= 0 and alpha in (0, 1), got {slack} and {alpha}")
        slacks = scales = ()
        if kind == "any":
            slacks, scales = r.floats("slacks", len(signals)), r.floats("scales", len(signals), positive=True)
            if any(v < 0 for v in slacks):
                raise BundleError(f"{r.path}.slacks", f"expected slacks >= 0, got {list(slacks)}")
        out = cls(signals=signals, slack=slack, threshold=r.float("threshold"), alpha=alpha, kind=kind,
                  slacks=slacks, scales=scales)
        r.finish()
        return out


@dataclass(frozen=True)
class MonitorManifest:
    name: str
    # The policy, N and selection verifier the signals were calibrated under ({"name", "content"}: the
    # verifier bundle's manifest sha256; None: no verifier).
    policy_fingerprint: str
    n: int
    verifier: dict | None
    # Role ("pseudocount", "value") -> subfolder holding that verifier bundle.
    scorers: dict[str, str]
    # sha256 of each scorer bundle's manifest.json (which lists its files' sha256).
    scorer_manifests: dict[str, str]
    # Signal -> [mean, std] over successful rollouts' decisions.
    standardisation: dict[str, list[float]] = field(default_factory=dict)
    # Detector name -> Detector; empty while uncalibrated (signals only, never an alarm).
    detectors: dict[str, Detector] = field(default_factory=dict)
    # The detector whose alarm acts ("combined" once calibrated).
    main: str | None = None
    calibration: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    # The embedding model ({"file": EMBEDDING_FILE, "sha256", "components"}) that gives `novelty`; None: none.
    embedding: dict | None = None
    # Calibration rollouts only: each decision also carries its pooled embedding, to fit the model from.
    record_embeddings: bool = False
    # Whether it reads the flow sampler's velocities (the `accel` signal; the engine exposes them), and over
    # how many positions from the decision's delay on (the actions that execute: the calibration's
    # `execute`; None: to the chunk's end).
    accel: bool = False
    accel_window: int | None = None
    schema_version: int = MONITOR_SCHEMA_VERSION

    @property
    def signals(self) -> tuple[str, ...]:
        return signals_for(self.n, self.scorers, self.embedding is not None, self.accel)

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version, "kind": "monitor", "name": self.name,
            "policy_fingerprint": self.policy_fingerprint, "n": self.n, "verifier": self.verifier,
            "scorers": dict(self.scorers), "scorer_manifests": dict(self.scorer_manifests),
            "signals": list(self.signals),
            "standardisation": {k: list(v) for k, v in self.standardisation.items()},
            "detectors": {k: d.to_dict() for k, d in self.detectors.items()}, "main": self.main,
            "calibration": self.calibration, "provenance": portable(self.provenance),
            "embedding": self.embedding, "record_embeddings": self.record_embeddings,
            # Written only when on, so that a monitor without it keeps the identity it had before it existed.
            **({"accel": True, "accel_window": self.accel_window} if self.accel else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MonitorManifest:
        r = Reader(data, "")
        version = r.int("schema_version")
        if version != MONITOR_SCHEMA_VERSION:
            raise BundleError("schema_version", f"this runtime reads version {MONITOR_SCHEMA_VERSION}, got {version}")
        r.str("kind", choices=("monitor",))
        scorers_r = r.obj("scorers")
        scorers = {role: scorers_r.str(role) for role in scorers_r.data}
        for role, folder in scorers.items():
            if role not in SCORERS:
                raise BundleError(f"scorers.{role}", f"unknown role (known: {', '.join(SCORERS)})")
            if "/" in folder or "\\" in folder or folder.startswith("."):
                raise BundleError(f"scorers.{role}", "must name a subfolder of the monitor bundle")
        shas_r = r.obj("scorer_manifests")
        shas = {role: shas_r.str(role) for role in shas_r.data}
        if set(shas) != set(scorers):
            raise BundleError("scorer_manifests", f"lists {sorted(shas)}, the scorers are {sorted(scorers)}")
        n = r.int("n", minimum=1)
        embedding = r.raw("embedding")
        if embedding is not None and not (isinstance(embedding, dict) and embedding.get("file") == EMBEDDING_FILE
                                          and isinstance(embedding.get("sha256"), str)):
            raise BundleError("embedding", f"expected null or {{\"file\": {EMBEDDING_FILE!r}, \"sha256\": ..., "
                                           f"\"components\": k}}, got {embedding!r:.80}")
        record_embeddings = r.raw("record_embeddings", False)
        if not isinstance(record_embeddings, bool):
            raise BundleError("record_embeddings", f"expected true or false, got {record_embeddings!r}")
        accel = r.raw("accel", False)
        if not isinstance(accel, bool):
            raise BundleError("accel", f"expected true or false, got {accel!r}")
        accel_window = r.raw("accel_window", None)
        if accel_window is not None and (isinstance(accel_window, bool) or not isinstance(accel_window, int)
                                         or accel_window < 1):
            raise BundleError("accel_window", f"expected null or a positive integer, got {accel_window!r}")
        signals = signals_for(n, scorers, embedding is not None, accel)
        listed = r.strs("signals")
        if listed != signals:
            raise BundleError("signals", f"lists {list(listed)}; N={n} with scorers {sorted(scorers)} gives "
                                         f"{list(signals)}")
        verifier = r.raw("verifier")
        if verifier is not None and not (isinstance(verifier, dict) and isinstance(verifier.get("content"), str)):
            raise BundleError("verifier", "expected null or {\"name\": ..., \"content\": <manifest sha256>}")
        std_r = r.obj("standardisation")
        standardisation = {}
        for name in std_r.data:
            if name not in signals:
                raise BundleError(f"standardisation.{name}", f"not one of the signals {list(signals)}")
            pair = std_r.raw(name)
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)
                    and math.isfinite(pair[0]) and math.isfinite(pair[1]) and pair[1] > 0):
                raise BundleError(f"standardisation.{name}", f"expected [mean, std > 0], got {pair!r}")
            standardisation[name] = [float(pair[0]), float(pair[1])]
        det_r = r.obj("detectors")
        detectors = {name: Detector.from_reader(det_r.obj(name), signals) for name in list(det_r.data)}
        for name, det in detectors.items():
            missing = [s for s in det.signals if s not in standardisation and det.kind == "cusum"]
            if missing:
                raise BundleError(f"detectors.{name}.signals", f"{missing} have no standardisation")
        main = r.raw("main")
        if (main is None) != (not detectors) or (main is not None and main not in detectors):
            raise BundleError("main", f"expected one of the detectors {sorted(detectors)} (null when none), got {main!r}")
        out = cls(name=r.str("name"), policy_fingerprint=r.str("policy_fingerprint"), n=n, verifier=verifier,
                  scorers=scorers, scorer_manifests=shas, standardisation=standardisation, detectors=detectors,
                  main=main, calibration=r.raw("calibration", {}), provenance=r.raw("provenance", {}),
                  embedding=embedding, record_embeddings=record_embeddings, accel=accel, accel_window=accel_window,
                  schema_version=version)
        scorers_r.finish()
        shas_r.finish()
        std_r.finish()
        det_r.finish()
        r.finish()
        return out

    def identity(self) -> str:
        """What the monitor computes and decides (not when or by which command it was written): eval
        results are reused only under the same identity."""
        data = self.to_dict()
        for key in ("provenance", "calibration", "name"):
            data.pop(key)
        return canonical_hash(data)


def read_monitor_manifest(path: str | Path) -> MonitorManifest:
    """A monitor bundle's manifest, validated, without loading its scorers."""
    path = Path(path)
    if not path.exists():
        raise BundleError("monitor", f"{path} does not exist")
    return MonitorManifest.from_dict(read_manifest(path))


def _check_policy(manifest: MonitorManifest, policy_fingerprint: str) -> None:
    if manifest.policy_fingerprint != policy_fingerprint:
        raise BundleError(f"monitor {manifest.name!r}.policy_fingerprint",
                          f"calibrated on policy {manifest.policy_fingerprint[:12]}..., this policy is "
                          f"{policy_fingerprint[:12]}...")


def check_monitor_use(manifest: MonitorManifest, policy_fingerprint: str, n: int, verifier_content: str | None,
                      execute: int | None = None) -> None:
    """Refuses a monitor calibrated under another policy, N, selection verifier or (when given, and the
    calibration recorded it) number of actions executed per chunk, naming which."""
    _check_policy(manifest, policy_fingerprint)
    calibrated_execute = (manifest.calibration or {}).get("execute")
    if execute is not None and calibrated_execute is not None and int(calibrated_execute) != int(execute):
        raise BundleError(f"monitor {manifest.name!r}.calibration.execute",
                          f"calibrated executing {calibrated_execute} actions per chunk, used executing {execute}: "
                          "the consistency between chunks and the accel rows depend on it; calibrate one with "
                          f"--execute {execute}")
    if manifest.n != n:
        raise BundleError(f"monitor {manifest.name!r}.n",
                          f"calibrated at N={manifest.n}, used at N={n}: its signals' distributions depend on N; "
                          f"calibrate one for N={n} (taco calibrate-monitor --n {n})")
    calibrated = None if manifest.verifier is None else manifest.verifier["content"]
    if calibrated != verifier_content:
        was = "no verifier" if manifest.verifier is None else f"verifier {manifest.verifier.get('name')!r}"
        now = "no verifier" if verifier_content is None else f"a verifier with manifest {verifier_content[:12]}..."
        raise BundleError(f"monitor {manifest.name!r}.verifier",
                          f"calibrated with {was} choosing the candidates, used with {now}")


class Monitor:
    """A loaded monitor bundle: computes a decision's signals (`decision_signals`, called by the Engine)
    and makes the per-episode `MonitorTrack`s that turn them into alarms."""

    def __init__(self, manifest: MonitorManifest, path: Path | None, scorers: Mapping,
                 embedding: Mapping[str, np.ndarray] | None = None):
        self.manifest, self.path, self.scorers = manifest, path, dict(scorers)
        self.name = manifest.name
        self.signals = manifest.signals
        # The embedding model (mean, basis, scale) that gives `novelty`, or None.
        self.embedding = None if embedding is None else {k: np.asarray(v, np.float64) for k, v in embedding.items()}
        if (self.embedding is None) != (manifest.embedding is None):
            raise BundleError("embedding", "the manifest and the loaded embedding model disagree")

    def check_policy(self, policy_fingerprint: str, feature_dim: int) -> None:
        """Refuses a monitor (or a scorer of it) made for another policy."""
        from verifiers import check_verifier

        _check_policy(self.manifest, policy_fingerprint)
        for scorer in self.scorers.values():
            check_verifier(scorer, feature_dim, policy_fingerprint)

    def decision_signals(self, chunks: np.ndarray, features: np.ndarray, valid: np.ndarray, index: int,
                         seed: int, embedding: np.ndarray | None = None, velocities: np.ndarray | None = None,
                         rows: np.ndarray | None = None) -> dict[str, float]:
        """The signals of one decision from its candidates (normalised units), their features, which are
        finite, the chosen one, the observation's pooled embedding (`pooled_embedding`; None: `novelty`
        is NaN) and the chosen candidate's Euler velocities float[K, H, A] with the positions they are
        scored at (bool[H], `executed_rows`; velocities None: `accel` is NaN). `inconsistency` needs the
        previous chunk: the track adds it."""
        out: dict[str, float] = {}
        if self.embedding is not None:
            out["novelty"] = math.nan if embedding is None else novelty(self.embedding, embedding)
        if self.manifest.accel:
            out["accel"] = math.nan if velocities is None else roughness(velocities, rows)
        ok = chunks[valid]
        if "spread" in self.signals:
            out["spread"] = candidate_spread(ok)
        if "keystone" in self.signals:
            out["keystone"] = keystone_spread(ok)
        good = valid & np.isfinite(features).all(axis=1)
        for role, scorer in self.scorers.items():
            if not good[index]:
                out.update(dict.fromkeys([s for s in SCORERS[role] if s in self.signals], math.nan))
            elif role == "pseudocount":
                # Two rows, the chosen candidate and the candidates' mean (the observation's reading whatever
                # the action): a pseudo-count network's cost is its weights' memory traffic, nearly the same
                # for 2 rows as for 1, where scoring all N would cost up to twice as much at N=16.
                both = "pseudocount_obs" in self.signals
                rows = np.stack([features[index], features[good].mean(axis=0)][:1 + both])
                steps = np.stack([chunks[index], chunks[good].mean(axis=0)][:1 + both])
                got = np.asarray(score_candidates(scorer, rows, steps, seed), np.float64)
                out["pseudocount"] = float(got[0])
                if both:
                    out["pseudocount_obs"] = float(got[1])
            else:
                # A value verifier reads the state from all the candidates' features (verifiers.value): all N.
                got = np.asarray(score_candidates(scorer, features[good], chunks[good], seed), np.float64)
                out["value"] = float(got[int(np.count_nonzero(good[:index]))])
        return out

    def track(self, dt: float) -> MonitorTrack:
        """A fresh episode's track (dt: seconds between a chunk's actions)."""
        return MonitorTrack(self, dt)


@dataclass
class MonitorStatus:
    """What the monitor says after one decision."""

    # Decision index in the episode (0 = its first).
    decision: int
    # This decision's raw signals (inconsistency included).
    signals: dict[str, float]
    # The main detector's CUSUM statistic and threshold (None while uncalibrated).
    statistic: float | None
    threshold: float | None
    # Whether the main detector is above its threshold now, and whether it has been since the reset.
    alarm: bool
    alarmed: bool
    # Every detector's statistic now.
    statistics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def clean(v):
            return None if v is None or not math.isfinite(v) else round(float(v), 6)

        return {"decision": self.decision, "signals": {k: clean(v) for k, v in self.signals.items()},
                "statistic": clean(self.statistic), "threshold": clean(self.threshold), "alarm": self.alarm,
                "alarmed": self.alarmed}


class MonitorTrack:
    """One episode's monitor state: the previous chunk, each detector's CUSUM, the first alarms.
    `update` once per decision, in order; `reset` at an episode start."""

    def __init__(self, monitor: Monitor, dt: float):
        self.monitor, self.dt = monitor, float(dt)
        self.reset()

    def reset(self) -> None:
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._start: float | None = None  # the first decision's first action time
        self.decisions = 0
        self.statistics = {name: 0.0 for name in self.monitor.manifest.detectors}
        # Kind "any": each of its signals' own CUSUM.
        self._members = {name: np.zeros(len(d.signals)) for name, d in self.monitor.manifest.detectors.items()
                         if d.kind == "any"}
        # Each detector's largest statistic so far.
        self.peaks = dict(self.statistics)
        # Detector -> index of the decision that first raised its alarm (absent: none yet).
        self.first_alarm: dict[str, int] = {}
        # Every decision's raw signals, in order (for records and calibration), and, while calibrating,
        # its pooled embedding.
        self.history: dict[str, list[float]] = {name: [] for name in self.monitor.signals}
        self.embeddings: list[np.ndarray] = []

    def standardised(self, signals: Mapping[str, float]) -> dict[str, float]:
        """sign x (value - mean) / std per calibrated signal, floored at Z_FLOOR; NaN stays NaN."""
        out = {}
        for name, (mean, std) in self.monitor.manifest.standardisation.items():
            v = signals.get(name, math.nan)
            out[name] = v if math.isnan(v) else max(Z_FLOOR, SIGNALS[name] * (v - mean) / std)
        return out

    def update(self, decision) -> MonitorStatus:
        """Takes the next decision of the episode (an Engine Decision with `signals`, scored now if the
        engine deferred them)."""
        read = getattr(decision, "read_signals", None)
        raw = read() if read is not None else decision.signals
        if raw is None:
            raise ValueError("the decision carries no monitor signals: the engine has no monitor")
        signals = dict(raw)
        if self._previous is not None:
            signals["inconsistency"] = chunk_inconsistency(decision.chunk, decision.times, *self._previous, self.dt)
        else:
            signals["inconsistency"] = math.nan
        self._previous = (np.asarray(decision.chunk, np.float64), np.asarray(decision.times, np.float64))
        if self._start is None:
            self._start = float(decision.times[0])
        elapsed = float(decision.times[0]) - self._start
        for name in self.history:
            self.history[name].append(signals.get(name, math.nan))
        if getattr(decision, "embedding", None) is not None:
            self.embeddings.append(decision.embedding)
        z = self.standardised(signals)
        manifest = self.monitor.manifest
        for name, detector in manifest.detectors.items():
            if detector.kind == "elapsed":
                self.statistics[name] = elapsed
            elif detector.kind == "any":
                readings = np.array([0.0 if math.isnan(z[s]) else z[s] for s in detector.signals])
                sums = np.maximum(0.0, self._members[name] + readings - np.asarray(detector.slacks))
                self._members[name] = sums
                self.statistics[name] = float(np.max(sums / np.asarray(detector.scales)))
            else:
                readings = [z[s] for s in detector.signals if not math.isnan(z[s])]
                c = float(np.mean(readings)) if readings else 0.0
                self.statistics[name] = max(0.0, self.statistics[name] + c - detector.slack)
            self.peaks[name] = max(self.peaks[name], self.statistics[name])
            if self.statistics[name] > detector.threshold and name not in self.first_alarm:
                self.first_alarm[name] = self.decisions
        main = manifest.main
        status = MonitorStatus(
            decision=self.decisions, signals=signals,
            statistic=None if main is None else self.statistics[main],
            threshold=None if main is None else manifest.detectors[main].threshold,
            alarm=main is not None and self.statistics[main] > manifest.detectors[main].threshold,
            alarmed=main is not None and main in self.first_alarm,
            statistics=dict(self.statistics))
        self.decisions += 1
        return status


def replay(manifest: MonitorManifest, signals: Mapping[str, list], decision_steps: list[int],
           dt: float) -> dict[str, tuple[float, int | None]]:
    """A monitor's detectors run over one episode's recorded raw signals (a record's `monitor.signals`,
    None or NaN where a signal had no value) with each decision's control step: detector -> (peak, the
    control step of its first alarm or None). What a MonitorTrack computes, without the decisions."""
    z = {name: standardise(np.array([math.nan if v is None else v for v in signals.get(name, [])], np.float64),
                           name, *pair) for name, pair in manifest.standardisation.items()}
    steps = np.asarray(decision_steps, np.float64)
    out = {}
    for name, detector in manifest.detectors.items():
        if detector.kind == "elapsed":
            path = (steps - steps[0]) * dt if len(steps) else np.zeros(0)
        else:
            path = detector.path(z)
        above = np.flatnonzero(path > detector.threshold)
        out[name] = (float(path.max(initial=0.0)), int(decision_steps[above[0]]) if len(above) else None)
    return out


def load_monitor(path: str | Path, session_factory: Callable | None = None) -> Monitor:
    """Loads a monitor bundle: its manifest, and each scorer bundle checked against the sha256 the manifest
    records for it (the scorer's own files against its manifest)."""
    from verifiers import load_verifier

    path = Path(path)
    manifest = read_monitor_manifest(path)
    scorers = {}
    for role, folder in manifest.scorers.items():
        sub = path / folder
        listed = sub / "manifest.json"
        if not listed.is_file():
            raise BundleError(f"scorers.{role}", f"{sub} holds no verifier bundle")
        actual = sha256_file(listed)
        if actual != manifest.scorer_manifests[role]:
            raise BundleError(f"scorer_manifests.{role}", f"checksum mismatch: manifest says "
                                                          f"{manifest.scorer_manifests[role][:12]}..., {listed} is {actual[:12]}...")
        scorers[role] = load_verifier(sub, session_factory)
    embedding = None
    if manifest.embedding is not None:
        file = path / EMBEDDING_FILE
        if not file.is_file():
            raise BundleError("embedding", f"{file} is missing")
        actual = sha256_file(file)
        if actual != manifest.embedding["sha256"]:
            raise BundleError("embedding.sha256", f"checksum mismatch: manifest says {manifest.embedding['sha256'][:12]}"
                                                  f"..., {file} is {actual[:12]}...")
        with np.load(file) as data:
            embedding = {k: data[k] for k in ("mean", "basis", "scale")}
    return Monitor(manifest, path, scorers, embedding)
