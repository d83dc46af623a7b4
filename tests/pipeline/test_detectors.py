from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from pipeline.detectors import DETECTORS, UnknownDetector, anomaly_scores, make_detector


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
    assert np.allclose(detector.projection_ @ detector.projection_, detector.projection_)  # a projection


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
    with pytest.raises(UnknownDetector, match="kmeans_lag"):
        feature_spec("svm", sensors, 8)


def test_kmeans_score_is_the_distance_to_the_nearest_centre(data: tuple[np.ndarray, np.ndarray]) -> None:
    normal, _outliers = data
    detector = make_detector("kmeans_lag").fit(normal).named_steps["detect"]
    x = normal[:50]
    naive = np.array([min(((row - c) ** 2).sum() for c in detector.centres_) for row in x]) / x.shape[1]
    np.testing.assert_allclose(detector.score_samples(x), naive, rtol=1e-9, atol=1e-12)
