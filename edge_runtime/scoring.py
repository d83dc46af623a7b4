"""Scoring: one lean onnxruntime session, one feature window per stream (LRU-bounded), the golden self-test."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_runtime.bundle import Bundle, BundleError
from edge_runtime.features import StreamWindow

Scores = npt.NDArray[np.float64]


def create_session(bundle: Bundle) -> object:
    """An onnxruntime session tuned for a small device: no arena, one thread, sequential, no telemetry."""
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    options = onnxruntime.SessionOptions()
    # The arena keeps freed buffers forever; without it RSS tracks what is really in use.
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Avoid onnxruntime spinning a pool thread that is never used.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(
            str(bundle.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors: convert at the boundary
        raise BundleError(f"onnxruntime cannot load {bundle.onnx_path}: {exc}. Re-export the bundle.") from exc


class BoundRow:
    """One feature row through an onnxruntime session whose input and output are bound to preallocated buffers.

    ``session.run`` converts its numpy input to a tensor, validates the feed in Python and allocates the output on
    every call; with one reading a request (the common case on a device) that was a third of the model call
    (25-40 µs per row on x86). Here the input and output tensors wrap two arrays made once (onnxruntime's
    IOBinding) and a call is a copy in, the run and a copy out. The same kernels run on the same float32 row, so
    the scores are exactly those of ``session.run``.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, n_features: int) -> None:
        import onnxruntime

        self.thread = threading.get_ident()  # the buffers are this thread's; others take session.run
        self._row = np.zeros((1, n_features), dtype=np.float32)
        (probe,) = session.run([output_name], {input_name: self._row})
        self._out = np.empty(probe.shape, dtype=probe.dtype)
        binding = session.io_binding()
        # OrtValues over the arrays' own memory (CPU): kept here, with the arrays, for as long as the binding.
        self._values = (
            onnxruntime.OrtValue.ortvalue_from_numpy(self._row),
            onnxruntime.OrtValue.ortvalue_from_numpy(self._out),
        )
        binding.bind_ortvalue_input(input_name, self._values[0])
        binding.bind_ortvalue_output(output_name, self._values[1])
        self._binding = binding
        # The C++ session's own entry point when this onnxruntime has it: the public wrapper adds Python-level
        # checks for WebGPU graph capture that a CPU session never needs (tests check the pinned version has it).
        native = getattr(getattr(session, "_sess", None), "run_with_iobinding", None)
        inner = getattr(binding, "_iobinding", None)
        self.native = native is not None and inner is not None
        self._run: Callable[[], object]
        if native is not None and inner is not None:
            self._run = functools.partial(native, inner, None)
        else:
            self._run = functools.partial(session.run_with_iobinding, binding)

    def scores(self, features: npt.NDArray[np.float64]) -> Scores:
        """The model's scores of one feature row (1, n_features) as float64 (1,): a new array each call."""
        np.copyto(self._row, features, casting="same_kind")  # float64 -> float32 exactly as astype rounds
        self._run()
        return self._out.astype(np.float64).reshape(-1)


def bound_row(session: object, input_name: str, output_name: str, n_features: int) -> BoundRow | None:
    """A :class:`BoundRow` for a real onnxruntime session; ``None`` for any other model seam (fakes in tests)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    if not isinstance(session, onnxruntime.InferenceSession):
        return None
    return BoundRow(session, input_name, output_name, n_features)


class StreamTable:
    """Feature windows by stream id, at most ``max_streams``; the least recently used stream is evicted."""

    def __init__(self, bundle: Bundle, max_streams: int) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}.")
        self._spec = bundle.card.features
        self._windows: OrderedDict[str, StreamWindow] = OrderedDict()
        self.max_streams = max_streams
        self.evicted = 0

    def get(self, stream: str) -> StreamWindow:
        """The window of ``stream`` (created empty if new), marked most recently used."""
        window = self._windows.get(stream)
        if window is not None:
            self._windows.move_to_end(stream)
            return window
        window = self._windows[stream] = StreamWindow(self._spec)
        while len(self._windows) > self.max_streams:
            self._windows.popitem(last=False)
            self.evicted += 1
        return window

    def put(self, stream: str, window: StreamWindow) -> None:
        """Make ``window`` the history of ``stream``, most recently used; evict beyond ``max_streams``."""
        windows = self._windows
        windows[stream] = window
        windows.move_to_end(stream)
        while len(windows) > self.max_streams:
            windows.popitem(last=False)
            self.evicted += 1

    def new_window(self) -> StreamWindow:
        """An empty window for this table's feature spec (not stored)."""
        return StreamWindow(self._spec)

    def peek(self, stream: str) -> StreamWindow | None:
        """The window of ``stream`` without touching recency, or ``None``."""
        return self._windows.get(stream)

    def __len__(self) -> int:
        return len(self._windows)

    def __contains__(self, stream: object) -> bool:
        return stream in self._windows


@dataclass(frozen=True)
class GoldenResult:
    """The outcome of replaying the bundle's golden vectors."""

    ok: bool
    max_error: float
    worst_index: int
    message: str


class NonFiniteScores(BundleError):
    """The model returned NaN or an infinite score for validated readings: a defect of the bundle."""


class Scorer:
    """Scores readings of named streams with the bundle's model; ``readings`` must already be validated."""

    def __init__(self, bundle: Bundle, session: object, max_streams: int = 1024) -> None:
        self.bundle = bundle
        self.card = bundle.card
        self.threshold = bundle.card.threshold
        self.streams = StreamTable(bundle, max_streams)
        self._session = session
        self._input = bundle.card.onnx.input_name
        self._outputs = [bundle.card.onnx.output_name]
        self._row = bound_row(session, self._input, bundle.card.onnx.output_name, bundle.card.features.n_features)

    @classmethod
    def load(cls, bundle: Bundle, max_streams: int = 1024) -> Scorer:
        return cls(bundle, create_session(bundle), max_streams)

    def model_scores(self, features: npt.NDArray[np.float64]) -> Scores:
        """The model's scores of feature rows (n, n_features), as float64 (n,)."""
        row = self._row
        if row is not None and features.shape[0] == 1 and row.thread == threading.get_ident():
            return row.scores(features)
        (out,) = self._session.run(self._outputs, {self._input: features.astype(np.float32)})  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def score(self, stream: str, readings: npt.NDArray[np.float64]) -> Scores:
        """Push ``readings`` (n, n_sensors) onto the stream's window and return their scores.

        The stream's history changes only once every score is finite: if the model raises or returns
        NaN/inf (:class:`NonFiniteScores`), the stream is left exactly as it was (and no stream is evicted).
        """
        streams = self.streams
        current = streams.peek(stream)
        # Push onto a copy (one stream's small window), swapped in only after the model succeeds.
        window = streams.new_window() if current is None else current.copy()
        scores = self.model_scores(window.push(readings))
        # validation bounds the inputs, so a non-finite score is a model defect (the ufunc's own reduction:
        # ndarray.all() adds a Python-level call per request)
        if not np.logical_and.reduce(np.isfinite(scores)):
            raise NonFiniteScores(
                f"{self.card.name} v{self.card.version} returned a non-finite score for stream {stream!r}; "
                "the stream's history was left unchanged. Report this bundle and roll back to a previous model."
            )
        streams.put(stream, window)
        return scores

    def self_test(self) -> GoldenResult:
        """Replay the golden readings from an empty history and compare with the expected scores."""
        golden = self.card.golden
        try:
            features = StreamWindow(self.card.features).push(np.asarray(golden.readings, dtype=np.float64))
            actual = self.model_scores(features)
        except Exception as exc:  # any failure to run the model means the bundle cannot be served
            return GoldenResult(False, float("inf"), -1, f"golden replay failed to run the model: {exc}")
        expected = np.asarray(golden.scores, dtype=np.float64)
        if actual.shape != expected.shape:
            return GoldenResult(
                False,
                float("inf"),
                -1,
                f"model returned {actual.shape[0]} scores for {expected.shape[0]} golden readings",
            )
        errors = np.abs(actual - expected)
        worst = int(np.argmax(errors))
        max_error = float(errors[worst])
        if not max_error <= golden.tolerance:  # also catches NaN
            return GoldenResult(
                False,
                max_error,
                worst,
                f"golden vector {worst} scored {float(actual[worst])!r}, expected {float(expected[worst])!r} "
                f"(error {max_error:.3g} > tolerance {golden.tolerance:g}); this runtime does not reproduce "
                f"the model's scores, so it must not serve {self.card.name} v{self.card.version}",
            )
        return GoldenResult(True, max_error, worst, f"{len(expected)} golden vectors match (max error {max_error:.3g})")
