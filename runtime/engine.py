"""The best-of-N engine: one observation -> N candidate chunks -> verifier scores -> one Decision."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from policies import Observation, PolicyBundle
from policies.errors import BundleError, ObservationError, SpecError
from policies.guidance import Guidance
from policies.pruning import Prune
from policies.sampler import History, PolicySampler
from policies.velocities import executed_rows
from runtime.adaptive import Adaptive
from runtime.monitor import Monitor, candidate_spread, load_monitor, pooled_embedding
from runtime.select import finite_candidates, select
from runtime.sessions import SessionConfig, make_session
from runtime.timing import StageTimer
from verifiers import check_verifier, load_verifier
from verifiers.bundle import read_verifier_manifest
from verifiers.base import Verifier, score_candidates

# Largest N accepted per step; more is almost surely a units mistake (and would exhaust memory).
MAX_CANDIDATES = 4096


@dataclass(frozen=True)
class EngineConfig:
    """Settings of an Engine."""

    # ONNX Runtime provider and threads for the policy and verifier sessions.
    session: SessionConfig = field(default_factory=SessionConfig)
    # Keep every candidate chunk and feature in the Decision (for diagnostics and recording).
    return_candidates: bool = False
    # Weight of continuity in selection, for guided (RTC) decisions: each candidate's score gains
    # `continuity` x its coherence with the executing chunk (bidirectional decoding's backward term; see
    # `continuity_scores`). 0: the verifier alone chooses.
    continuity: float = 0.0
    # Score the failure monitor's signals when they are first read (`Decision.read_signals`: a MonitorTrack's
    # update, or the asynchronous executor's worker right after it has handed the decision over) instead of
    # inside `infer`: its verifier graphs then cost nothing between the observation and the chunk. Off for
    # a loop whose alarm must stop the decision that raised it (the ROS node's `hold`).
    defer_monitor: bool = False
    # Pruned best-of-N (policies.pruning): every candidate runs the first `prune.steps` denoising steps, the
    # verifier judges each one's predicted chunk, and only the best `prune.keep` are denoised to the end;
    # the decision is chosen among those. None: every candidate runs every step. A decision of N <= keep
    # candidates is not pruned.
    prune: Prune | None = None
    # Adaptive N (runtime.adaptive): a decision of N > `adaptive.first` candidates samples the first round,
    # and the other N - first only when the first round's spread is above `adaptive.level`. None: all N.
    adaptive: Adaptive | None = None


# Serialises the deferred monitor scoring of decisions read from two threads (the executor's worker and the
# control thread): one of them scores, the other waits for its result.
_SIGNALS_LOCK = threading.Lock()


@dataclass(frozen=True)
class BatchItem:
    """One observation of `Engine.infer_batch`, with the arguments `infer` takes for it."""

    observation: Observation | Mapping
    n: int | None = None
    seed: int | None = None
    # The session's observation history (each robot keeps its own); None: the engine's.
    history: History | None = None
    # Real-time chunking toward the robot's executing chunk, or None.
    guidance: Guidance | None = None


@dataclass
class Decision:
    """The result of one `Engine.infer` call."""

    # float32[H, A]: the chosen chunk in robot units (radians, normalised gripper), left arm then right.
    chunk: np.ndarray
    # float64[H]: seconds, the time each action of `chunk` is for (observation stamp + i * action_dt).
    times: np.ndarray
    # Index of the chosen candidate in [0, n).
    index: int
    # float32[N]: every candidate's verifier score (higher = more in-distribution); None with no verifier.
    scores: np.ndarray | None
    # float32[N, H, A]: all candidates in robot units, when `return_candidates`; else None.
    candidates: np.ndarray | None
    # float32[N, F]: all candidates' verifier features, when `return_candidates`; else None.
    features: np.ndarray | None
    # Milliseconds per stage: preprocess, encode, sample, score, select, total.
    timings: dict[str, float]
    # Number of candidates sampled (fewer than asked for when an adaptive decision stopped after its first
    # round: EngineConfig.adaptive).
    n: int
    # The seed the noise was drawn from; the same seed gives the same decision.
    seed: int
    # Name of the verifier that scored the candidates, None if none did.
    verifier: str | None
    # Fingerprint of the policy bundle that produced the chunk.
    policy_fingerprint: str
    # float32[N]: each candidate's coherence with the executing chunk (higher = closer; see
    # `continuity_scores`), for a guided decision; else None.
    continuity: np.ndarray | None = None
    # Positions of the chunk that execute before it arrives, for a guided decision (Guidance.delay); 0 else.
    delay: int = 0
    # The monitor's signals of this decision (runtime.monitor.Monitor.decision_signals), when the engine
    # has a monitor; else None. A MonitorTrack turns them into the episode's alarm.
    signals: dict[str, float] | None = None
    # float64[D]: the observation's pooled embedding, only while a monitor is being calibrated
    # (MonitorManifest.record_embeddings); else None.
    embedding: np.ndarray | None = None
    # int[M]: the candidates denoised to the end, best predicted first, for a pruned decision
    # (EngineConfig.prune); None when every candidate was. `scores` is NaN for the others.
    finished: np.ndarray | None = None
    # float32[N]: every candidate's score on its predicted chunk at the pruning step, for a pruned decision.
    prune_scores: np.ndarray | None = None
    # The spread of an adaptive decision's first round (runtime.adaptive), which said whether to go on.
    first_spread: float | None = None
    # The deferred monitor scoring (EngineConfig.defer_monitor) until `read_signals` has run it.
    pending_signals: Callable[[], dict[str, float]] | None = field(default=None, repr=False, compare=False)

    @property
    def signals_ready(self) -> bool:
        """Whether `signals` holds this decision's monitor signals (or it has none to compute)."""
        return self.pending_signals is None

    def read_signals(self) -> dict[str, float] | None:
        """The monitor's signals, scored now if they were deferred (their milliseconds then go to
        `timings["monitor"]`, outside `timings["total"]`); None when the engine has no monitor. A scorer's
        error is raised once; the signals then read as none (`{}`)."""
        if self.pending_signals is not None:
            with _SIGNALS_LOCK:
                pending = self.pending_signals
                if pending is not None:
                    started = time.perf_counter()
                    try:
                        self.signals = pending()
                    except BaseException:
                        self.signals = {}  # a scorer failed: the decision reads as one with no signal
                        raise
                    finally:
                        self.timings["monitor"] = (time.perf_counter() - started) * 1e3
                        self.pending_signals = None  # last: `signals_ready` readers take no lock
        return self.signals


class Engine:
    """Serves one policy bundle and, optionally, one verifier: best-of-N around the policy's sampler.

    `infer` is called once per replanning step by the chunk executor, the policy server or a ROS node;
    for a policy that encodes several past observations (`manifest.history` > 1) the executor also calls
    `observe` on the control steps in between, and `reset` at an episode start. `set_verifier` may be
    called from another thread between steps; a step always uses one verifier.
    """

    def __init__(self, policy: str | Path | PolicyBundle, verifier: str | Path | Verifier | None = None,
                 config: EngineConfig | None = None, monitor: str | Path | Monitor | None = None):
        self.config = config or EngineConfig()
        # The policy's graphs, run with this engine's provider and thread settings.
        self.policy = PolicySampler(policy, lambda path: make_session(path, self.config.session))
        self.bundle = self.policy.bundle
        self.manifest = self.policy.manifest
        # The observations the policy encodes together (one for most policies).
        self.history = self.policy.history()
        self._seeds = np.random.SeedSequence()
        self._lock = threading.Lock()
        self._verifier: Verifier | None = None
        if verifier is not None:
            self.set_verifier(verifier)
        if self.config.prune is not None and self.config.adaptive is not None:
            raise ValueError("prune and adaptive: choose one way of spending less on N candidates")
        if self.config.prune is not None:
            self.policy.prepare_pruning(self.config.prune)
        self._monitor: Monitor | None = None
        if monitor is not None:
            self.set_monitor(monitor)

    @property
    def verifier(self) -> Verifier | None:
        return self._verifier

    def load_verifier(self, verifier: str | Path | Verifier) -> Verifier:
        """Loads and checks a verifier against this policy without installing it. A path must be a bundle
        bound to this policy; a Verifier object made in this process (a plugin) may be unbound."""
        made_here = isinstance(verifier, Verifier)
        if not made_here:
            self.check_verifier_bundle(verifier)  # refuses a foreign one before hashing and loading it
            verifier = load_verifier(verifier, lambda p: make_session(p, self.config.session))
        check_verifier(verifier, self.manifest.feature_dim, self.bundle.fingerprint, allow_unbound=made_here)
        return verifier

    def check_verifier_bundle(self, path: str | Path) -> None:
        """The cheap half of `load_verifier`: the bundle's manifest is valid and bound to this policy (its
        files are not hashed, its graph not loaded). Raises BundleError naming the field."""
        check_verifier(read_verifier_manifest(path), self.manifest.feature_dim, self.bundle.fingerprint)

    def set_verifier(self, verifier: str | Path | Verifier | None) -> Verifier | None:
        """Swaps the verifier between two steps. An invalid one raises and the old one stays."""
        new = None if verifier is None else self.load_verifier(verifier)
        with self._lock:
            self._verifier = new
        return new

    @property
    def monitor(self) -> Monitor | None:
        return self._monitor

    def set_monitor(self, monitor: str | Path | Monitor | None) -> Monitor | None:
        """Installs a failure monitor (a bundle path or a loaded Monitor) whose signals every decision then
        carries; None removes it. One calibrated for another policy is refused and the old one stays."""
        if monitor is not None and not isinstance(monitor, Monitor):
            monitor = load_monitor(monitor, lambda p: make_session(p, self.config.session))
        if monitor is not None:
            monitor.check_policy(self.bundle.fingerprint, self.manifest.feature_dim)
            if self.config.prune is not None or self.config.adaptive is not None:
                how = f"prunes them ({self.config.prune})" if self.config.prune else \
                    f"draws fewer of them when they agree ({self.config.adaptive})"
                raise BundleError("monitor", f"a monitor's signals are calibrated on N fully denoised candidates; "
                                             f"this engine {how}: run it without that or without the monitor")
            if monitor.manifest.accel:
                self.policy.expose_velocities()
        with self._lock:
            self._monitor = monitor
        return monitor

    def observe(self, observation: Observation | Mapping) -> None:
        """Keeps an observation of a control step without inferring (policies with history only; a no-op
        for the others). Raises ObservationError naming the bad field."""
        if self.manifest.history > 1:
            self.history.push(observation)

    def reset(self) -> None:
        """Forgets the observation history: the next observation starts an episode."""
        self.history.clear()

    @staticmethod
    def _score(verifier: Verifier, features: np.ndarray, chunks: np.ndarray, valid: np.ndarray, seed: int) -> np.ndarray:
        """Runs a verifier (ONNX or Python plugin) on the valid candidates and checks that it returned one
        number for each; invalid candidates score NaN (never chosen). A verifier that compares candidates
        with each other so never sees a NaN one."""
        scores = np.full(features.shape[0], np.nan, np.float32)
        if not valid.any():
            return scores
        got = np.asarray(score_candidates(verifier, features[valid], chunks[valid], seed))
        m = int(valid.sum())
        if got.shape != (m,) or not np.issubdtype(got.dtype, np.number):
            raise BundleError(f"verifier {verifier.name!r}.scores",
                              f"expected {m} numbers (shape [{m}]), got {got.dtype} of shape {list(got.shape)}")
        scores[valid] = got
        return scores

    def infer(self, observation: Observation | Mapping, n: int | None = None, seed: int | None = None,
              noise: np.ndarray | None = None, guidance: Guidance | None = None) -> Decision:
        """Samples N candidate chunks from one observation, scores them, and returns the best.

        Args:
            observation: the robot's observation (see `policies.Observation`).
            n: number of candidates (default 1, or noise's first axis); with no verifier the first
                (finite) candidate is returned.
            seed: seeds the candidates' noise; drawn from the engine's own sequence when None.
            noise: float32[N, Hn, D] (`manifest.noise_dims`), the candidates' initial noise instead of
                the seed's draw: what LeRobot's `predict_action_chunk(batch, noise=...)` takes, to
                reproduce a run. The seed still draws any per-step noise.
            guidance: real-time chunking toward the chunk the robot is executing (policies.guidance);
                every candidate is guided. Needs a bundle whose sampler takes it (manifest `rtc`).

        Raises:
            ObservationError: naming the bad field of the observation (or of n, seed, noise).
            SpecError: if every candidate is non-finite.
        """
        n, seed = self._arguments(n, seed, noise)
        with self._lock:
            verifier, monitor = self._verifier, self._monitor
        timer = StageTimer()
        with timer.stage("preprocess"):
            rtc = self.policy.rtc_feeds(guidance)
            feeds, stamp = self._push(observation, self.history)
            initial, step_noise = self.policy.draw(n, seed, noise)
        with timer.stage("encode"):
            prefix = self.policy.encode(feeds)
        if self._prunes(n):
            chunks, features, finished, pruned = self._sample_pruned(prefix, initial, rtc or None, verifier, seed,
                                                                     guidance, timer)
            return self._decide(chunks, features, finished, verifier, n, seed, stamp, timer, guidance, pruned=pruned)
        if self._adapts(n):
            chunks, features, spread = self._sample_adaptive(prefix, initial, step_noise, rtc or None, timer)
            return self._decide(chunks, features, None, verifier, len(chunks), seed, stamp, timer, guidance,
                                first_spread=spread)
        with timer.stage("sample"):
            chunks, features, *velocities = self.policy.sample(prefix, initial, step_noise, rtc or None,
                                                               velocities=_wants_velocities(monitor))
        return self._decide(chunks, features, None, verifier, n, seed, stamp, timer, guidance, monitor, (prefix, 0),
                            velocities[0] if velocities else None)

    def _adapts(self, n: int) -> bool:
        return self.config.adaptive is not None and n > self.config.adaptive.first

    def _sample_adaptive(self, prefix, noise, step_noise, rtc, timer):
        """The candidates of one adaptive decision: the first round's, and the rest's when the first round's
        finite candidates spread above the level (or fewer than two are finite). Returns (chunks, features,
        the first round's spread)."""
        first = self.config.adaptive.first
        steps = (None, None) if step_noise is None else (step_noise[:, :first], step_noise[:, first:])
        with timer.stage("sample"):
            chunks, features = self.policy.sample(prefix, noise[:first], steps[0], rtc)
            spread = candidate_spread(chunks[finite_candidates(chunks)])
            if not spread <= self.config.adaptive.level:  # NaN (under two finite) goes on too
                more, more_features = self.policy.sample(prefix, noise[first:], steps[1], rtc)
                chunks, features = np.concatenate([chunks, more]), np.concatenate([features, more_features])
        return chunks, features, spread

    def _prunes(self, n: int) -> bool:
        return self.config.prune is not None and n > self.config.prune.keep

    def _sample_pruned(self, prefix, noise, rtc, verifier, seed, guidance, timer):
        """The candidates of one pruned decision: every one's first k steps and predicted chunk, the best m
        by the verifier (with continuity, as `_decide` ranks) finished. Returns (chunks[N], features[N], the
        mask of the finished ones, (their indices best first, the pruning's scores)) for `_decide`, each
        pruned candidate's row its predicted chunk and features."""
        prune = self.config.prune
        with timer.stage("sample"):
            x_k, guess = self.policy.prune_head(prefix, noise, prune.steps, rtc)
            chunks, features = self.policy.finish(prefix, guess, self.manifest.num_steps - 1, prune.steps, rtc, noise)
        with timer.stage("prune"):
            valid = finite_candidates(chunks)
            scores = None
            if verifier is not None:
                valid &= np.isfinite(features).all(axis=1)
                scores = self._score(verifier, features, chunks, valid, seed)
            ranking = scores
            if guidance is not None and self.config.continuity > 0:
                continuity = continuity_scores(self.policy.unnormalize(chunks), guidance)
                ranking = (0 if scores is None else scores) + np.float32(self.config.continuity) * continuity
            eligible = valid if ranking is None else valid & np.isfinite(ranking)
            order = np.flatnonzero(eligible)
            if ranking is not None:  # best first, ties to the lowest index (a stable sort of -ranking)
                order = order[np.argsort(-ranking[order], kind="stable")]
            order = order[:prune.keep]
            if order.size == 0:
                raise SpecError("chunks", f"all {len(chunks)} candidates are non-finite at the pruning step "
                                          f"{prune.steps}; nothing to execute")
        with timer.stage("finish"):
            done, done_features = self.policy.finish(prefix, x_k[order], prune.steps, prune.steps, rtc, noise[order])
        chunks, features = chunks.copy(), features.copy()
        chunks[order], features[order] = done, done_features
        finished = np.zeros(len(chunks), bool)
        finished[order] = True
        return chunks, features, finished, (order, scores)

    def infer_batch(self, items: Sequence[BatchItem]) -> list[Decision | ObservationError | SpecError]:
        """`infer` for several observations at once (robots served by one server): one encoder call for
        all of them, and one sampler call when the bundle's sampler takes a prefix per candidate
        (`PolicySampler.per_candidate_prefix`; else one sampler call per observation). Each item is scored
        and chosen among its own candidates.

        One item's bad observation does not fail the others: its ObservationError (or SpecError, when
        all its candidates are non-finite) is returned in its place. A batch of one computes exactly what
        `infer` does. Larger batches run the graphs at another shape, which may change the float rounding
        (the same seed gives the same decision up to it; on CPU our graphs measured bit for bit).

        Items of a policy with history (`manifest.history` > 1) each need their own `history`.
        """
        with self._lock:
            verifier, monitor = self._verifier, self._monitor
        if self.manifest.history > 1 and len(items) > 1 and len({id(item.history) for item in items
                                                                  if item.history is not None}) < len(items):
            raise ValueError("a policy with history needs each item of a batch to carry its own history")
        results: list = [None] * len(items)
        timers, ready = [StageTimer() for _ in items], []
        for i, item in enumerate(items):
            try:
                with timers[i].stage("preprocess"):
                    n, seed = self._arguments(item.n, item.seed, None)
                    rtc = self.policy.rtc_feeds(item.guidance)
                    feeds, stamp = self._push(item.observation, item.history or self.history)
                    initial, step_noise = self.policy.draw(n, seed)
                ready.append((i, n, seed, feeds, stamp, initial, step_noise, rtc or None))
            except SpecError as err:  # ObservationError, or a guidance this bundle cannot take
                results[i] = err
        if not ready:
            return results
        shared = StageTimer()
        with shared.stage("encode"):
            feeds = {name: np.concatenate([r[3][name] for r in ready]) for name in ready[0][3]}
            prefix = self.policy.encode(feeds)
        if self.config.prune is not None or self.config.adaptive is not None:
            # Each item on its own, against its own prefix: its rounds or its pruning depend on its candidates.
            for j, (i, n, seed, _, stamp, initial, step_noise, rtc) in enumerate(ready):
                timers[i].ms.update(encode=shared.ms["encode"])
                own = {name: value[j:j + 1] for name, value in prefix.items()}
                finished = pruned = spread = None
                try:
                    if self._prunes(n):
                        chunks, features, finished, pruned = self._sample_pruned(
                            own, initial, rtc, verifier, seed, items[i].guidance, timers[i])
                    elif self._adapts(n):
                        chunks, features, spread = self._sample_adaptive(own, initial, step_noise, rtc, timers[i])
                    else:
                        with timers[i].stage("sample"):
                            chunks, features = self.policy.sample(own, initial, step_noise, rtc)
                    results[i] = self._decide(chunks, features, finished, verifier, len(chunks), seed, stamp,
                                              timers[i], items[i].guidance, pruned=pruned, first_spread=spread)
                except SpecError as err:
                    results[i] = err
            return results
        with shared.stage("sample"):
            sampled = self.policy.sample_many(prefix, [r[5] for r in ready], [r[6] for r in ready],
                                              [r[7] for r in ready], velocities=_wants_velocities(monitor))
        for j, ((i, n, seed, _, stamp, _, _, _), (chunks, features, *velocities)) in enumerate(zip(ready, sampled)):
            timers[i].ms.update(encode=shared.ms["encode"], sample=shared.ms["sample"])
            try:
                results[i] = self._decide(chunks, features, None, verifier, n, seed, stamp, timers[i],
                                          items[i].guidance, monitor, (prefix, j), velocities[0] if velocities else None)
            except SpecError as err:
                results[i] = err
        return results

    def _arguments(self, n, seed, noise) -> tuple[int, int]:
        """Checks n and seed (drawing a seed when None) for one decision."""
        if noise is not None:
            if not isinstance(noise, np.ndarray) or noise.ndim != 3:
                raise ObservationError("noise", f"expected float32[N, {', '.join(map(str, self.manifest.noise_dims))}]")
            if n is not None and n != noise.shape[0]:
                raise ObservationError("n", f"n={n} but the given noise holds {noise.shape[0]} candidates")
            n = noise.shape[0]
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_CANDIDATES:
            raise ObservationError("n", f"expected an integer in [1, {MAX_CANDIDATES}], got {n!r}")
        if seed is None:
            seed = int(self._seeds.spawn(1)[0].generate_state(1)[0])
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ObservationError("seed", f"expected an integer in [0, 2**63), got {seed!r}")
        return int(n), int(seed)

    @staticmethod
    def _push(observation: Observation | Mapping, history: History) -> tuple[dict[str, np.ndarray], float]:
        """Validates an observation into `history`; returns the encoder's feeds and its stamp."""
        if isinstance(observation, Mapping):
            observation = Observation.from_dict(observation)
        history.push(observation)
        return history.feeds(until=observation.stamp), float(observation.stamp)

    def _decide(self, chunks: np.ndarray, features: np.ndarray, eligible: np.ndarray | None,
                verifier: Verifier | None, n: int, seed: int, stamp: float, timer: StageTimer,
                guidance: Guidance | None = None, monitor: Monitor | None = None, prefix=None,
                velocities: np.ndarray | None = None, pruned: tuple | None = None,
                first_spread: float | None = None) -> Decision:
        """Scores one observation's candidates, chooses among them, and computes the monitor's signals
        (`velocities`: float32[N, K, Hn, D], the sampler's, when the monitor reads them). `eligible`: the
        candidates that may be chosen (a pruned decision's finished ones; None: all); only they are scored.
        `pruned`: a pruned decision's (finished indices, pruning scores), for the Decision."""
        with timer.stage("score"):
            valid = finite_candidates(chunks)
            if eligible is not None:
                valid &= eligible
            if verifier is not None:
                # A NaN feature mapped to a finite score by a lenient verifier must not win either.
                valid &= np.isfinite(features).all(axis=1)
            scores = None if verifier is None else self._score(verifier, features, chunks, valid, seed)
            keep = self.config.return_candidates
            # Robot units, once, for continuity and for the Decision.
            candidates = self.policy.unnormalize(chunks) if keep or guidance is not None else None
            continuity = None if guidance is None else continuity_scores(candidates, guidance)
        with timer.stage("select"):
            ranking = scores
            if continuity is not None and self.config.continuity > 0:
                ranking = (0 if scores is None else scores) + np.float32(self.config.continuity) * continuity
            index = select(ranking, valid)
            chunk = self.policy.unnormalize(chunks[index]) if candidates is None else candidates[index].copy()
            if not np.isfinite(chunk).all():
                raise SpecError("chunk", "the chosen chunk overflows when unnormalised; refusing to return it")
        signals = embedding = pending = None
        if monitor is not None:
            with timer.stage("embed" if self.config.defer_monitor else "monitor"):
                # The embedding is read now, whatever the timing: the prefix is the sampler's to reuse.
                wanted = monitor.embedding is not None or monitor.manifest.record_embeddings
                pooled = pooled_embedding(*prefix) if wanted and prefix is not None else None
                embedding = pooled if monitor.manifest.record_embeddings else None
                flow = rows = None
                if velocities is not None:  # the chosen candidate's, the chunk's positions and actions only
                    h, a = chunks.shape[1:]
                    flow = velocities[index][:, :h, :a]
                    rows = executed_rows(h, 0 if guidance is None else guidance.delay, monitor.manifest.accel_window,
                                         None if guidance is None else guidance.weights)
                if self.config.defer_monitor:
                    def pending():
                        return monitor.decision_signals(chunks, features, valid, index, seed, pooled, flow, rows)
                else:
                    signals = monitor.decision_signals(chunks, features, valid, index, seed, pooled, flow, rows)
        timings = timer.finish()
        return Decision(
            chunk=chunk,
            times=stamp + self.manifest.action_dt * np.arange(self.manifest.chunk_length, dtype=np.float64),
            index=index,
            scores=scores,
            candidates=candidates if keep else None,
            features=features if keep else None,
            timings=timings,
            n=n,
            seed=seed,
            verifier=None if verifier is None else verifier.name,
            policy_fingerprint=self.bundle.fingerprint,
            continuity=continuity,
            delay=0 if guidance is None else guidance.delay,
            signals=signals,
            embedding=embedding,
            pending_signals=pending,
            finished=None if pruned is None else pruned[0],
            prune_scores=None if pruned is None else pruned[1],
            first_spread=first_spread,
        )


def _wants_velocities(monitor: Monitor | None) -> bool:
    """Whether a decision must ask the sampler for its velocities (a monitor with the `accel` signal)."""
    return monitor is not None and monitor.manifest.accel


def continuity_scores(candidates: np.ndarray, guidance: Guidance) -> np.ndarray:
    """float32[N]: minus each candidate's weighted distance to the executing chunk, sum_i W_i |a_i - Y_i|
    / sum_i W_i over the positions the target covers, |.| the Euclidean norm over joints in robot units
    (bidirectional decoding's backward coherence; 0 for a candidate that continues the chunk exactly).
    NaN for non-finite candidates; zeros when no position is weighted."""
    k = len(guidance.target)
    weights = guidance.weights[:k].astype(np.float32)
    total = weights.sum()
    if total <= 0:
        return np.zeros(len(candidates), np.float32)
    distance = np.linalg.norm(candidates[:, :k] - guidance.target[None], axis=-1)  # [N, K]
    return (-(distance * weights).sum(axis=1) / total).astype(np.float32)
