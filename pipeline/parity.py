"""Parity: scikit-learn vs fp32 ONNX vs int8 ONNX scores on held-out rows, as a device would compute them.

ONNX models run in onnxruntime on the CPU with the device's session options (one thread, no memory
arena, sequential). Dynamic int8 quantizes activations with one scale per call, so an int8 score
depends on the other readings scored in the same call (a spike in a request coarsens its neighbours).
A device scores whatever a request holds, so int8 is measured both one reading per call and in calls
of :data:`BATCH` consecutive readings, and its figures are the worse of the two. fp32 does not depend
on the batch and is scored in one call. Targets: decision agreement at the threshold of at least
99.9 % for fp32 and 99 % for int8; a variant below target is flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.onnx_export import INPUT_NAME

Array = npt.NDArray[np.float64]
TARGETS: dict[str, float] = {"fp32": 0.999, "int8": 0.99}
DEFAULT_MAX_ROWS = 5000
BATCH = 64


def device_session(onnx_bytes: bytes) -> Any:
    """An onnxruntime session configured as on a device (CPU, one thread, no arena)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_scores(onnx_bytes: bytes, features: npt.ArrayLike, *, batch: int | None = None) -> Array:
    """Scores from the ONNX model: all rows in one call, or ``batch`` consecutive rows per call."""
    session = device_session(onnx_bytes)
    x = np.asarray(features, dtype=np.float32)
    step = x.shape[0] if batch is None else batch
    if x.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    parts = [session.run(None, {INPUT_NAME: x[i : i + step]})[0] for i in range(0, x.shape[0], step)]
    return np.concatenate(parts).astype(np.float64)


@dataclass(frozen=True)
class VariantParity:
    """One ONNX variant against scikit-learn."""

    variant: str
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / score scale
    agreement: float  # share of rows with the same decision at the threshold
    disagreements: int
    target: float
    passed: bool
    mode: str = "one call"  # how the ONNX scores were computed


@dataclass(frozen=True)
class ParityReport:
    rows: int
    threshold: float
    score_scale: float
    fp32: VariantParity
    int8: VariantParity | None
    int8_note: str = ""

    @property
    def status(self) -> str:
        """``"pass"`` or which variants fall below target, e.g. ``"int8-below-target"``."""
        failed = [v.variant for v in (self.fp32, self.int8) if v is not None and not v.passed]
        return "pass" if not failed else "+".join(failed) + "-below-target"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "threshold": self.threshold,
            "score_scale": self.score_scale,
            "targets": dict(TARGETS),
            "fp32": asdict(self.fp32),
            "int8": None if self.int8 is None else asdict(self.int8),
            "int8_note": self.int8_note,
            "status": self.status,
            "method": "onnxruntime CPU as on a device (1 thread, no arena); decision = score >= threshold",
        }


def score_scale(scores: npt.ArrayLike, threshold: float) -> float:
    """The size of a typical score: the larger of |threshold| and the scores' standard deviation."""
    s = np.asarray(scores, dtype=np.float64)
    return max(abs(threshold), float(s.std()) if s.size else 0.0, 1e-12)


def compare(
    variant: str, reference: Array, candidate: Array, threshold: float, scale: float, mode: str = "one call"
) -> VariantParity:
    diff = np.abs(reference - candidate)
    same = (reference >= threshold) == (candidate >= threshold)
    agreement = float(same.mean()) if same.size else 1.0
    return VariantParity(
        variant=variant,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_rel_diff=float(diff.max() / scale) if diff.size else 0.0,
        agreement=agreement,
        disagreements=int((~same).sum()),
        target=TARGETS[variant],
        passed=agreement >= TARGETS[variant],
        mode=mode,
    )


def _worst(a: VariantParity, b: VariantParity) -> VariantParity:
    """The variant's figures as the worse of two ways of scoring."""
    low = a if a.agreement <= b.agreement else b
    return replace(
        low,
        max_abs_diff=max(a.max_abs_diff, b.max_abs_diff),
        max_rel_diff=max(a.max_rel_diff, b.max_rel_diff),
        mode=f"worst of {a.mode} ({a.agreement:.5f}) and {b.mode} ({b.agreement:.5f})",
    )


def check_parity(
    sklearn_scores: npt.ArrayLike,
    features: npt.ArrayLike,
    threshold: float,
    fp32_onnx: bytes,
    int8_onnx: bytes | None,
    *,
    int8_note: str = "",
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> ParityReport:
    """Compare on held-out ``features`` (a seeded sample of at most ``max_rows`` rows)."""
    reference = np.asarray(sklearn_scores, dtype=np.float64)
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_rows, replace=False))
        x, reference = x[rows], reference[rows]
    scale = score_scale(reference, threshold)
    fp32 = compare("fp32", reference, onnx_scores(fp32_onnx, x), threshold, scale)
    int8 = None
    if int8_onnx is not None:
        single = compare("int8", reference, onnx_scores(int8_onnx, x, batch=1), threshold, scale, "1 reading per call")
        batched = compare(
            "int8", reference, onnx_scores(int8_onnx, x, batch=BATCH), threshold, scale, f"{BATCH} readings per call"
        )
        int8 = _worst(single, batched)
    return ParityReport(
        rows=int(x.shape[0]), threshold=threshold, score_scale=scale, fp32=fp32, int8=int8, int8_note=int8_note
    )
