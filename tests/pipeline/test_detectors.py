from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from edge_runtime.errors import InputError
from pipeline.detectors import (
    DETECTORS,
    ROBUST_STATS,
    PCAReconstructionDetector,
    UnknownDetector,
    anomaly_scores,
    make_detector,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    # Correlated normal data in 6 dimensions: a 2-D latent factor plus small noise.
    latent = rng.normal(size=(1500, 2))
    mixing = rng.normal(size=(2, 6))
    normal = latent @ mixing + rng.normal(0, 0.05, size=(1500, 6))
    outliers = rng.normal(size=(50, 2)) @ mixing + rng.normal(0, 2.0, size=(50, 6))
    return normal, outliers


@pytest.mark.parametrize("name", DETECTORS)
def test_outliers_score_higher_than_normal_rows(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    normal, outliers = data
    pipeline = make_detector(name).fit(normal[:1000])
    held_out = anomaly_scores(pipeline, normal[1000:])
    bad = anomaly_scores(pipeline, outliers)
    assert held_out.dtype == np.float64
    assert held_out.shape == (500,)
    assert np.median(bad) > np.quantile(held_out, 0.95)


@pytest.mark.parametrize("name", DETECTORS)
def test_sklearn_conventions(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    pipeline = make_detector(name)
    detector = pipeline.named_steps["detect"]
    assert not any(k.endswith("_") for k in vars(detector))  # nothing learnt before fit
    copy = clone(pipeline).fit(data[0])
    assert any(k.endswith("_") for k in vars(copy.named_steps["detect"]))
    assert pipeline.named_steps["scale"].__class__.__name__ == "StandardScaler"


@pytest.mark.parametrize("name", DETECTORS)
def test_deterministic_for_a_seed(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    a = anomaly_scores(make_detector(name, random_state=3).fit(data[0]), data[1])
    b = anomaly_scores(make_detector(name, random_state=3).fit(data[0]), data[1])
    np.testing.assert_array_equal(a, b)


def test_unfitted_detector_says_call_fit() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="fit"):
        make_detector("pca").named_steps["detect"].score_samples(np.zeros((2, 3)))


def test_pca_keeps_a_residual_dimension() -> None:
    x = np.random.default_rng(1).normal(size=(100, 3))
    detector = make_detector("pca").fit(x).named_steps["detect"]
    assert 1 <= detector.n_components_ <= 2
    assert np.allclose(detector.projection_ @ detector.projection_, detector.projection_)  # an orthogonal projection
    # Whitened: symmetric, and blind to the kept components (their direction scores 0).
    whitened = PCAReconstructionDetector(whiten=True).fit(x)
    assert np.allclose(whitened.projection_, whitened.projection_.T)
    assert np.allclose(whitened.components_ @ whitened.projection_, 0.0)


def test_unknown_detector_names_the_choices() -> None:
    with pytest.raises(UnknownDetector, match="iforest"):
        make_detector("svm")


def test_each_detector_reads_its_own_feature_group() -> None:
    from pipeline.detectors import feature_spec

    sensors = ("a", "b")
    assert feature_spec("iforest", sensors, 8).stats
    assert feature_spec("iforest", sensors, 8).lags == 0
    raw = feature_spec("iforest_raw", sensors, 8)
    assert raw.feature_names() == ["a", "b"]
    lagged = feature_spec("pca_lag", sensors, 8)
    assert lagged.stats == ()
    assert lagged.lags == 7
    assert lagged.n_features == 16
    robust = feature_spec("pca_robust", sensors, 8)
    assert robust.stats == ROBUST_STATS
    assert "flat" in robust.stats
    assert "mad" in robust.stats
    with pytest.raises(UnknownDetector, match="kmeans_lag"):
        feature_spec("svm", sensors, 8)


def _stuck_sensor_scores(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``name`` on a held-out synthetic day: its normal rows, and a sensor stuck for 60 readings."""
    from edge_runtime.features import batch_features
    from pipeline.detectors import feature_spec
    from pipeline.synth import SENSORS, synth_telemetry

    frame = synth_telemetry(devices=1, days=3, seed=5)
    x = frame[list(SENSORS)].ffill().to_numpy()
    normal = frame["label"].to_numpy() == 0
    spec = feature_spec(name, SENSORS, 16)
    fit_rows = np.arange(len(x)) < 2880
    pipeline = make_detector(name).fit(batch_features(spec, x)[fit_rows & normal])
    held_out = x[2880:].copy()
    held_normal = normal[2880:]
    clean_run = np.convolve(held_normal.astype(int), np.ones(80, dtype=int), "valid") == 80  # rows i .. i+79 normal
    start = int(np.flatnonzero(clean_run[100:])[0]) + 100
    stuck = held_out.copy()
    stuck[start : start + 60, 2] = stuck[start, 2]  # motor_current stuck
    normal_scores = anomaly_scores(pipeline, batch_features(spec, held_out))[held_normal]
    # Readings 4 .. 59 of the stuck stretch: held three times in a row at least.
    stuck_scores = anomaly_scores(pipeline, batch_features(spec, stuck))[start + 4 : start + 60]
    return normal_scores, stuck_scores


def test_pca_robust_scores_a_stuck_sensor_above_normal_readings() -> None:
    normal, stuck = _stuck_sensor_scores("pca_robust")
    assert np.min(stuck) > np.quantile(normal, 0.99)


def test_kmeans_score_is_the_distance_to_the_nearest_centre(data: tuple[np.ndarray, np.ndarray]) -> None:
    normal, _outliers = data
    detector = make_detector("kmeans_lag").fit(normal).named_steps["detect"]
    x = normal[:50]
    naive = np.array([min(((row - c) ** 2).sum() for c in detector.centres_) for row in x]) / x.shape[1]
    np.testing.assert_allclose(detector.score_samples(x), naive, rtol=1e-9, atol=1e-12)


def _two_tight_and_loose_pairs(rng: np.random.Generator, n: int) -> np.ndarray:
    """x, y = x + small noise (a tight relation); z, w = z + larger noise (a loose one)."""
    x, z = rng.normal(size=n), rng.normal(size=n)
    return np.column_stack([x, x + rng.normal(0, 0.05, n), z, z + rng.normal(0, 0.5, n)])


def test_whitened_pca_weighs_a_broken_tight_relation_above_a_normal_loose_swing() -> None:
    train = _two_tight_and_loose_pairs(np.random.default_rng(0), 5000)
    tight_broken = np.array([[0.0, 0.25, 0.0, 0.0]])  # y off x by 5 of its noise sd: a stuck or decoupled sensor
    loose_swing = np.array([[0.0, 0.0, 0.0, 1.0]])  # w off z by 2 of its noise sd: normal for that pair
    whitened = PCAReconstructionDetector(whiten=True).fit(train)
    plain = PCAReconstructionDetector().fit(train)
    assert whitened.n_components_ == plain.n_components_ == 2
    assert whitened.score_samples(tight_broken)[0] > 5 * whitened.score_samples(loose_swing)[0]
    # Without whitening the residual is in the features' units and the loose pair's swing dominates.
    assert plain.score_samples(loose_swing)[0] > plain.score_samples(tight_broken)[0]


def test_whitened_pca_drops_exact_identities_of_the_features() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=2000), rng.normal(size=2000)
    train = np.column_stack([a, b, a - b])  # the third feature is an identity of the others, like dev = x - mean
    detector = PCAReconstructionDetector(n_components=1, whiten=True).fit(train)
    assert detector.n_residual_ == 1  # the zero-variance direction is dropped, not divided by ~0
    assert np.isfinite(detector.projection_).all()
    assert np.abs(detector.projection_).max() < 1e3


def test_pca_refuses_a_relative_sd_floor_outside_zero_one() -> None:
    with pytest.raises(InputError, match="min_relative_sd must be in"):
        PCAReconstructionDetector(whiten=True, min_relative_sd=1.5).fit(np.random.default_rng(0).normal(size=(10, 3)))
