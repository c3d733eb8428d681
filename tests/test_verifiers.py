"""Verifiers trained on features: in-distribution beats out-of-distribution for cfn/rnd/knn, CFN reads
visitation counts, kNN is exact, random ignores the data, and bundles are bound to their policy."""

import numpy as np
import pytest

from verifiers import load_verifier
from verifiers.features import FeatureSet
from verifiers.train import VerifierTrainConfig, train_verifier

F = 24


def feature_set(x, fingerprint="p" * 64):
    n = len(x)
    return FeatureSet(x.astype(np.float32), np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.float32),
                      np.zeros(n, np.int64), fingerprint, "d" * 64, 8)


def auc(pos, neg):
    """P(score of an in-distribution point > score of an out-of-distribution one)."""
    return float((pos[:, None] > neg[None, :]).mean())


@pytest.fixture(scope="module")
def clouds():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((4, F))
    def sample(n, shift=0.0):
        return rng.standard_normal((n, 4)) @ basis + 0.1 * rng.standard_normal((n, F)) + shift
    offset = np.zeros(F)
    offset[:6] = 2.5
    return sample(2000), sample(200), sample(200, offset)


FAST = dict(hidden=128, blocks=2, epochs=30, batch_size=256, threads=1)


@pytest.mark.workstation
@pytest.mark.parametrize("kind", ["cfn", "rnd", "knn"])
def test_in_distribution_scores_higher(kind, clouds, tmp_path):
    train, near, far = clouds
    verifier = train_verifier(feature_set(train), VerifierTrainConfig(kind=kind, **FAST), tmp_path / kind,
                              log=lambda m: None)
    assert verifier.manifest.type == kind and verifier.feature_dim == F
    scores_near, scores_far = verifier.score(near.astype(np.float32)), verifier.score(far.astype(np.float32))
    assert scores_near.shape == (200,) and np.isfinite(scores_near).all()
    assert auc(scores_near, scores_far) > 0.9


def test_random_verifier_never_looks_at_the_candidates_and_picks_uniformly(clouds, tmp_path):
    from policies import BundleError

    train, near, far = clouds
    verifier = train_verifier(feature_set(train), VerifierTrainConfig(kind="random"), tmp_path / "r", log=lambda m: None)
    assert verifier.takes_seed and not verifier.takes_chunks
    x = near[:8].astype(np.float32)
    # The score depends on the seed and the slot only: other features, even these ones reversed, change nothing.
    np.testing.assert_array_equal(verifier.score(x, seed=7), verifier.score(far[:8].astype(np.float32), seed=7))
    np.testing.assert_array_equal(verifier.score(x[::-1].copy(), seed=7), verifier.score(x, seed=7))
    assert not np.array_equal(verifier.score(x, seed=7), verifier.score(x, seed=8))
    # Over decision seeds (as the executor draws them) every slot is picked equally often.
    seeds = np.random.default_rng(0).integers(0, 2**63, 4000)
    picks = np.array([int(np.argmax(verifier.score(x, seed=int(s)))) for s in seeds])
    counts = np.bincount(picks, minlength=8)
    assert ((counts - 500) ** 2 / 500).sum() < 30  # chi-square, 7 dof: p < 1e-4 for a fair pick
    # `--seed` salts it: another random arm, not the same picks.
    salted = train_verifier(feature_set(train), VerifierTrainConfig(kind="random", seed=1), tmp_path / "r1",
                            log=lambda m: None)
    other = np.array([int(np.argmax(salted.score(x, seed=int(s)))) for s in seeds[:800]])
    assert 0.06 < np.mean(other == picks[:800]) < 0.2  # 1/8 by chance
    with pytest.raises(BundleError, match="seed"):
        verifier.score(x)
    with pytest.raises(BundleError, match="seed"):
        verifier.score(x, seed=-1)


@pytest.mark.workstation
def test_cfn_counts_visits(tmp_path):
    """A point seen 50 times reads a higher pseudo-count than one seen once (Lobel et al.'s property)."""
    rng = np.random.default_rng(1)
    frequent, rare = rng.standard_normal(F) * 0.5, rng.standard_normal(F) * 0.5
    background = rng.standard_normal((1500, F))
    x = np.concatenate([background, frequent + 0.01 * rng.standard_normal((50, F)), rare[None]])
    verifier = train_verifier(feature_set(x), VerifierTrainConfig(kind="cfn", **{**FAST, "epochs": 60}),
                              tmp_path / "cfn", log=lambda m: None)
    s = verifier.score(np.stack([frequent, rare]).astype(np.float32))
    assert s[0] > s[1]


def test_knn_matches_brute_force(clouds, tmp_path):
    train, near, _ = clouds
    verifier = train_verifier(feature_set(train), VerifierTrainConfig(kind="knn", k=3), tmp_path / "k",
                              log=lambda m: None)
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-6)
    z_train, z = (train - mean) / std, (near[:10] - mean) / std
    d = np.sqrt(((z[:, None] - z_train[None]) ** 2).sum(-1))
    expected = -np.sort(d, axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(verifier.score(near[:10].astype(np.float32)), expected, rtol=1e-3, atol=1e-3)


def test_bundle_is_bound_to_its_policy(exported, clouds, tmp_path):
    from policies import BundleError
    from runtime import Engine

    flow = exported("flow")
    f = flow.bundle.manifest.feature_dim
    x = np.random.default_rng(0).standard_normal((300, f))
    ok = train_verifier(feature_set(x, flow.bundle.fingerprint), VerifierTrainConfig(kind="knn"), tmp_path / "ok",
                        log=lambda m: None)
    engine = Engine(flow.bundle, verifier=ok.path)
    assert engine.verifier.name == "ok"
    other = train_verifier(feature_set(x, "0" * 64), VerifierTrainConfig(kind="knn"), tmp_path / "other",
                           log=lambda m: None)
    with pytest.raises(BundleError, match="trained on policy"):
        engine.set_verifier(other.path)
    assert load_verifier(ok.path).manifest.provenance["train_features"] == 300


def test_feature_set_round_trips(tmp_path):
    fs = feature_set(np.arange(12.0).reshape(4, 3))
    again = FeatureSet.load(fs.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(again.features, fs.features)
    assert again.policy_fingerprint == fs.policy_fingerprint and again.k == 8


def test_consensus_picks_the_candidate_nearest_the_others_and_needs_the_chunks(tmp_path):
    from policies import BundleError

    rng = np.random.default_rng(0)
    centre = rng.standard_normal((8, 4))
    chunks = (centre + 0.3 * rng.standard_normal((9, 8, 4))).astype(np.float32)
    chunks[5] = centre + 0.01
    features = rng.standard_normal((9, F)).astype(np.float32)
    verifier = train_verifier(feature_set(features), VerifierTrainConfig(kind="consensus"), tmp_path / "c",
                              log=lambda m: None)
    assert verifier.takes_chunks and verifier.manifest.type == "consensus"
    scores = verifier.score(features, chunks)
    expected = -np.sqrt(((chunks - chunks.mean(0)) ** 2).sum(2)).mean(1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert int(np.argmax(scores)) == 5
    # The features do not enter the score; the chunks must come with them.
    np.testing.assert_allclose(verifier.score(-features, chunks), scores)
    with pytest.raises(BundleError, match="chunks"):
        verifier.score(features)


def test_engine_passes_normalised_chunks_to_a_consensus_verifier(exported, tmp_path):
    from policies import make_example_observation
    from runtime import Engine, EngineConfig
    from verifiers.train import untrained_verifier

    flow = exported("flow")
    verifier = untrained_verifier("consensus", flow.bundle.path, tmp_path / "consensus")
    assert load_verifier(verifier.path).policy_fingerprint == flow.bundle.fingerprint
    engine = Engine(flow.bundle, verifier=verifier.path, config=EngineConfig(return_candidates=True))
    decision = engine.infer(make_example_observation(flow.bundle.manifest, seed=1, image_size=(64, 64)), n=8, seed=2)
    m = flow.bundle.manifest.normalization
    normalised = (decision.candidates - np.asarray(m.action_mean)) / np.asarray(m.action_std)
    nearest = np.sqrt(((normalised - normalised.mean(0)) ** 2).sum(2)).mean(1)
    np.testing.assert_allclose(decision.scores, -nearest, rtol=1e-3, atol=1e-4)
    assert decision.index == int(np.argmin(nearest)) and decision.verifier == "consensus"


def test_a_combined_verifier_sums_its_components_standardised_over_the_candidates(tmp_path, capsys):
    from pathlib import Path

    from taco.cli import main

    shipped = Path(__file__).resolve().parents[1] / "artifacts" / "bundles"
    cfn, consensus, rnd = (load_verifier(shipped / f"flow-{k}") for k in ("cfn", "consensus", "rnd"))
    out = tmp_path / "combined"
    assert main(["combine-verifiers", "--verifier", str(cfn.path), "--verifier", str(consensus.path),
                 "--weights", "1,0.5", "--out", str(out)]) == 0
    assert "2 components" in capsys.readouterr().out
    combined = load_verifier(out)
    assert combined.takes_chunks and combined.policy_fingerprint == cfn.policy_fingerprint
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, cfn.feature_dim)).astype(np.float32)
    chunks = rng.normal(size=(16, 32, 14)).astype(np.float32)

    def z(s):
        return (s - s.mean()) / np.sqrt(s.var() + 1e-6)

    expected = z(cfn.score(features)) + 0.5 * z(consensus.score(features, chunks))
    np.testing.assert_allclose(combined.score(features, chunks), expected, atol=1e-5)
    assert not np.allclose(expected, z(cfn.score(features)), atol=1e-3)  # both components count
    # With one component weighted 0 it picks what the other picks.
    assert main(["combine-verifiers", "--verifier", str(cfn.path), "--verifier", str(rnd.path), "--weights", "0,1",
                 "--out", str(tmp_path / "rnd-only")]) == 0
    assert np.argmax(load_verifier(tmp_path / "rnd-only").score(features)) == np.argmax(rnd.score(features))
    # Refused: one verifier, or weights that do not match.
    assert main(["combine-verifiers", "--verifier", str(cfn.path), "--out", str(tmp_path / "x")]) == 2
    assert main(["combine-verifiers", "--verifier", str(cfn.path), "--verifier", str(rnd.path), "--weights", "1",
                 "--out", str(tmp_path / "y")]) == 2


@pytest.mark.workstation
def test_a_verifier_follows_a_re_export_of_its_policy_and_no_other(exported, tmp_path, capsys):
    """`taco rebind-verifier`: a re-export of the same weights with new graph inputs (here RTC) has a new
    fingerprint; the verifier follows it once the candidates and features agree bit for bit, and scores
    as before. Other weights, another kind, or a verifier of another policy are refused."""
    import copy

    import torch

    from policies import BundleError, make_example_observation
    from policies.export import export_bundle
    from runtime import Engine
    from taco.cli import main
    from verifiers.rebind import rebind_verifier
    from verifiers.train import untrained_verifier

    flow = exported("flow")
    old = export_bundle(flow.policy, tmp_path / "old", normalization=flow.normalization, rtc=False)
    assert old.fingerprint != flow.bundle.fingerprint
    verifier = untrained_verifier("consensus", old.path, tmp_path / "consensus")
    with pytest.raises(BundleError, match="trained on policy"):
        Engine(flow.bundle, verifier=verifier.path)
    out = tmp_path / "rebound"
    assert main(["rebind-verifier", "--verifier", str(verifier.path), "--from-policy", str(old.path),
                 "--policy", str(flow.path), "--out", str(out), "--observations", "3"]) == 0
    assert "differ by at most 0 (chunks), 0 (features)" in capsys.readouterr().out
    rebound = load_verifier(out)
    assert rebound.policy_fingerprint == flow.bundle.fingerprint
    assert rebound.manifest.provenance["rebound"]["from_policy"] == old.fingerprint
    obs = make_example_observation(flow.bundle.manifest, seed=1, image_size=(64, 64))
    before = Engine(old, verifier=verifier.path).infer(obs, n=8, seed=2)
    after = Engine(flow.bundle, verifier=out).infer(obs, n=8, seed=2)
    np.testing.assert_array_equal(after.scores, before.scores)
    assert after.index == before.index

    nudged = copy.deepcopy(flow.policy)
    with torch.no_grad():
        next(nudged.parameters()).add_(1e-3)
    other = export_bundle(nudged, tmp_path / "nudged", normalization=flow.normalization)
    with pytest.raises(ValueError, match="differ by up to"):
        rebind_verifier(verifier.path, old.path, other.path, tmp_path / "no", observations=2)
    with pytest.raises(ValueError, match="kind"):
        rebind_verifier(verifier.path, old.path, exported("diffusion").path, tmp_path / "no", observations=2)
    with pytest.raises(ValueError, match="bound to policy"):
        rebind_verifier(out, old.path, flow.path, tmp_path / "no", observations=2)
    assert not (tmp_path / "no").exists()


def test_a_bare_onnx_verifier_is_refused_by_the_engine_until_wrapped_for_the_policy(exported, tmp_path, capsys):
    from policies import BundleError
    from runtime import Engine
    from taco.cli import main
    from verifiers.synthetic import linear_verifier_onnx

    flow = exported("flow")
    f = flow.bundle.manifest.feature_dim
    bare = linear_verifier_onnx(tmp_path / "mine.onnx", np.ones(f))
    engine = Engine(flow.bundle)
    with pytest.raises(BundleError, match="bound to no policy.*taco wrap-verifier"):
        engine.set_verifier(bare)
    with pytest.raises(BundleError, match="bare file"):
        engine.check_verifier_bundle(bare)
    assert engine.verifier is None
    assert main(["wrap-verifier", str(bare), "--policy", str(flow.path), "--out", str(tmp_path / "wrapped")]) == 0
    assert "bound to policy" in capsys.readouterr().out
    assert engine.set_verifier(tmp_path / "wrapped").policy_fingerprint == flow.bundle.fingerprint
    other = exported("diffusion")
    with pytest.raises(BundleError, match="trained on policy"):
        Engine(other.bundle).check_verifier_bundle(tmp_path / "wrapped")
