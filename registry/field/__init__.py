"""Field feedback: device summaries aggregated per model version and device group, logged to MLflow.

- :mod:`registry.field.report`: :func:`aggregate` (pure) into a :class:`FieldReport`, text rendering, retrain advice;
- :mod:`registry.field.mlflow_log`: :func:`log_to_mlflow` against the registered model version;
- :mod:`registry.field.sources`: summaries from a JSONL file or a fleet snapshot (any iterable of
  ``(device_id, groups, summary)`` works);
- :mod:`registry.field.simulate`: devices simulated in-process with the device's own scoring code.
"""

from registry.field.mlflow_log import FieldLogError, field_metrics, log_to_mlflow
from registry.field.report import (
    ALL_GROUPS,
    FeatureDrift,
    FieldReport,
    GroupStats,
    MalformedSummary,
    RetrainAdvice,
    aggregate,
    parse_summary,
    render_text,
    retrain_advice,
)
from registry.field.simulate import (
    SimulatedDevice,
    drift_timeline,
    fleet,
    run_device,
    sigma_shift,
    simulate_fleet,
    stream_readings,
)
from registry.field.sources import read_jsonl, snapshot_summaries, write_jsonl

__all__ = [
    "ALL_GROUPS",
    "FeatureDrift",
    "FieldLogError",
    "FieldReport",
    "GroupStats",
    "MalformedSummary",
    "RetrainAdvice",
    "SimulatedDevice",
    "aggregate",
    "drift_timeline",
    "field_metrics",
    "fleet",
    "log_to_mlflow",
    "parse_summary",
    "read_jsonl",
    "render_text",
    "retrain_advice",
    "run_device",
    "sigma_shift",
    "simulate_fleet",
    "snapshot_summaries",
    "stream_readings",
    "write_jsonl",
]
