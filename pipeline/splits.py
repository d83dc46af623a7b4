"""The training data: windowed features of every stream, split by time into train, validation and test.

Features come only from :func:`edge_runtime.features.batch_features`, computed over each stream's whole
series in time order. They only look back, so a validation or test row never sees a later reading; a row's
window may reach into the previous split, which is what the device sees too.

Each stream is cut at the same fractions: its first ``train`` share of readings trains, the next
``validation`` share calibrates the threshold and picks the detector, the rest is the test set.
Features are rounded to float32 so float64 scikit-learn and float32 ONNX score the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_runtime.errors import InputError
from edge_runtime.features import FeatureSpec, batch_features
from pipeline.telemetry import Telemetry

Array = npt.NDArray[np.float64]
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """The rows of one split, in stream then time order."""

    name: str
    features: Array  # (n, n_features), float32-rounded float64
    raw: Array  # (n, n_sensors) raw readings
    labels: npt.NDArray[np.int8] | None
    streams: npt.NDArray[np.str_]
    timestamps: npt.NDArray[np.datetime64]

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])

    @property
    def has_both_classes(self) -> bool:
        return self.labels is not None and 0 < int(self.labels.sum()) < self.n_rows

    def take(self, rows: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> Split:
        """The same split restricted to ``rows`` (indices or a mask)."""
        return Split(
            name=self.name,
            features=self.features[rows],
            raw=self.raw[rows],
            labels=None if self.labels is None else self.labels[rows],
            streams=self.streams[rows],
            timestamps=self.timestamps[rows],
        )

    def stream(self, name: str) -> Split:
        return self.take(self.streams == name)


@dataclass(frozen=True)
class Splits:
    spec: FeatureSpec
    train: Split
    validation: Split
    test: Split
    fractions: tuple[float, float, float]

    @property
    def has_labels(self) -> bool:
        return self.train.labels is not None


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise InputError(
            f"split fractions must be three positive numbers (train, validation, test) summing to 1, got {fractions!r}."
        )


def time_splits(
    telemetry: Telemetry, spec: FeatureSpec, *, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> Splits:
    """Featurize every stream and cut each one by time into train / validation / test."""
    _check_fractions(fractions)
    missing = [s for s in spec.sensors if s not in telemetry.sensors]
    if missing:
        raise InputError(
            f"feature spec names sensors {missing} that the telemetry lacks (it has {list(telemetry.sensors)})."
        )
    parts: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in SPLIT_NAMES}
    for stream, frame in telemetry.streams():
        raw = frame[list(spec.sensors)].to_numpy(dtype=np.float64)
        features = batch_features(spec, raw).astype(np.float32).astype(np.float64)
        n = raw.shape[0]
        cut1 = int(np.floor(n * fractions[0]))
        cut2 = int(np.floor(n * (fractions[0] + fractions[1])))
        columns: dict[str, np.ndarray] = {
            "features": features,
            "raw": raw,
            "streams": np.full(n, stream),
            "timestamps": frame["timestamp"].to_numpy(dtype="datetime64[ns]"),
        }
        if telemetry.has_labels:
            columns["labels"] = frame["label"].to_numpy(dtype=np.int8)
        for name, (start, stop) in zip(SPLIT_NAMES, ((0, cut1), (cut1, cut2), (cut2, n)), strict=True):
            parts[name].append({key: value[start:stop] for key, value in columns.items()})
    splits = {name: _concat(name, chunks, spec) for name, chunks in parts.items()}
    for name, split in splits.items():
        if split.n_rows == 0:
            raise InputError(
                f"{telemetry.source}: the {name} split is empty ({telemetry.n_rows} rows in "
                f"{len(parts[name])} streams, fractions {fractions}); provide longer streams "
                "(at least 5 readings each)."
            )
    return Splits(spec=spec, fractions=fractions, **splits)


def _concat(name: str, chunks: list[dict[str, np.ndarray]], spec: FeatureSpec) -> Split:
    def cat(key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([c[key] for c in chunks]) if chunks else empty

    return Split(
        name=name,
        features=cat("features", np.empty((0, spec.n_features))),
        raw=cat("raw", np.empty((0, spec.n_sensors))),
        labels=cat("labels", np.empty(0, dtype=np.int8)) if chunks and "labels" in chunks[0] else None,
        streams=cat("streams", np.empty(0, dtype=np.str_)),
        timestamps=cat("timestamps", np.empty(0, dtype="datetime64[ns]")),
    )
