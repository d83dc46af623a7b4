"""Golden vectors: raw readings of one held-out stream and the scores the shipped model gives them.

The scores are computed exactly as the runtime's self-test replays them (``edge_runtime.scoring``): a
fresh :class:`~edge_runtime.features.StreamWindow` (empty history), all readings pushed at once, and the
shipped ONNX file run once on them in onnxruntime with the device's session options. (One call matters
for int8: dynamic quantization scales activations per call.) The readings are a stretch of the test
split around its most anomalous reading, so the replay covers both normal and alarming scores.

Tolerance, relative to the score scale (the larger of |threshold| and the score spread):

* fp32 ``1e-4``: the same float32 graph on another CPU or onnxruntime build differs by accumulated
  rounding, about 1e-6 of the scale for these small graphs; a wrong model, feature order or window
  changes scores by a sizeable part of the scale. 1e-4 sits well between the two.
* int8 ``1e-3``: integer products are exact everywhere, but the float activation scale may round an
  input to the neighbouring int8 step on another CPU (FMA vs. not); one step moves a score by well
  under 1e-3 of the scale, a wrong model still by far more.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import GoldenVectors
from edge_runtime.errors import InputError
from edge_runtime.features import FeatureSpec, StreamWindow
from pipeline.parity import onnx_scores

DEFAULT_COUNT = 64
RELATIVE_TOLERANCE = {"none": 1e-4, "int8-dynamic": 1e-3}


def pick_readings(raw: npt.ArrayLike, scores: npt.ArrayLike, count: int = DEFAULT_COUNT) -> npt.NDArray[np.float64]:
    """``count`` consecutive readings of one stream, placed so the top-scoring reading falls in the last quarter."""
    x = np.asarray(raw, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if x.shape[0] == 0 or x.shape[0] != s.shape[0]:
        raise InputError(
            f"golden readings need a non-empty stream with one score per reading, got {x.shape} and {s.shape}."
        )
    count = min(count, x.shape[0])
    top = int(np.argmax(s))
    start = int(np.clip(top - (3 * count) // 4, 0, x.shape[0] - count))
    return x[start : start + count]


def score_from_empty_history(onnx_bytes: bytes, spec: FeatureSpec, readings: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Scores of ``readings`` pushed into a fresh stream window and scored in one call, as the self-test does."""
    features = StreamWindow(spec).push(np.asarray(readings, dtype=np.float64))
    return onnx_scores(onnx_bytes, features)


def golden_vectors(
    onnx_bytes: bytes, spec: FeatureSpec, readings: npt.ArrayLike, scale: float, quantization: str = "none"
) -> GoldenVectors:
    """The golden vectors of ``readings`` for this model; tolerance ``RELATIVE_TOLERANCE[quantization] * scale``."""
    if quantization not in RELATIVE_TOLERANCE:
        raise InputError(f"unknown quantization {quantization!r}; expected one of {list(RELATIVE_TOLERANCE)}.")
    x = np.asarray(readings, dtype=np.float64)
    scores = score_from_empty_history(onnx_bytes, spec, x)
    return GoldenVectors(
        readings=[[float(v) for v in row] for row in x],
        scores=[float(v) for v in scores],
        tolerance=float(RELATIVE_TOLERANCE[quantization] * max(scale, 1e-12)),
    )
