"""MLflow: where runs go, how models are logged and registered, and how a registered bundle comes back.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a sqlite database ``mlflow.db`` in the working
directory. Every registered version points at the run that trained it; the run's artifacts hold the
bundles (``bundle/fp32``, ``bundle/int8``) and the version tag ``shipped_bundle`` names the one to ship.
MLflow's own exceptions are converted here into :class:`TrackingError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.errors import NotFound, TemporaryError

DEFAULT_MODEL_NAME = "otaml-anomaly"
DEFAULT_EXPERIMENT = "otaml-train"
SHIPPED_BUNDLE_TAG = "shipped_bundle"
# skops refuses to load types it does not trust; these are the ones our pipelines contain.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "pipeline.detectors.IsolationForestDetector",
    "pipeline.detectors.PCAReconstructionDetector",
    "pipeline.detectors.AutoencoderDetector",
    "pipeline.detectors.KMeansDistanceDetector",
)


class TrackingError(TemporaryError):
    """The MLflow tracking server or store failed; usually worth retrying once it is reachable."""


def resolve_tracking_uri(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    env = os.environ if environ is None else environ
    uri = env.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def _local_artifact_location(uri: str) -> str | None:
    """For a sqlite store, ``mlruns/`` beside the database (MLflow's default is the current directory)."""
    if not uri.startswith("sqlite:///"):
        return None  # a server decides (its --artifacts-destination)
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


@contextmanager
def session(tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> Iterator[tuple[str, str]]:
    """Point MLflow's fluent API at ``tracking_uri`` (or the default) for the block; yield (uri, experiment id).

    MLflow keeps the tracking URI in a process global (and mirrors it into ``MLFLOW_TRACKING_URI``); both are
    restored afterwards, so a notebook or test that trains twice against different stores never leaks one
    run into the other store. The experiment is passed by id, never set globally.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = tracking_uri or resolve_tracking_uri()
    previous = tracking_utils._tracking_uri  # the public getter falls back to env/defaults: not what was set
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else client.create_experiment(experiment, artifact_location=_local_artifact_location(uri))
            )
        except Exception as exc:
            raise TrackingError(
                f"cannot reach the MLflow tracking store at {uri!r}: {exc}. Check MLFLOW_TRACKING_URI."
            ) from exc
        yield uri, str(experiment_id)
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None clears the setting, as before
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _pins(*names: str) -> list[str]:
    """Exact pins of installed distributions, so MLflow need not infer requirements (slow: it imports the model)."""
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def feature_signature(n_features: int) -> Any:
    """The models' schema: float32 ``features`` [N, n_features] in, float32 ``score`` [N] out (higher: anomalous)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_features), "features")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "score")]),
    )


def log_sklearn(pipeline: Any, name: str = "sklearn-model") -> str:
    """Log the fitted pipeline (sklearn flavor, skops format) with its signature; return its model URI.

    No input example: the pipelines have ``score_samples``, not ``predict``, so MLflow has no python_function
    flavor to check an example against (the registered ONNX model carries one).
    """
    import mlflow.sklearn

    info = mlflow.sklearn.log_model(
        pipeline,
        name=name,
        signature=feature_signature(int(pipeline.n_features_in_)),
        skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
        # Loading also needs otaml's `pipeline` package importable (the detector classes live there).
        pip_requirements=_pins("scikit-learn", "numpy", "skops"),
    )
    return str(info.model_uri)


def log_onnx(onnx_bytes: bytes, name: str = "onnx-model", *, example: Any) -> str:
    """Log the fp32 ONNX graph (onnx flavor) with its signature and ``example`` feature rows; return its model URI.

    The signature lets MLflow show the schema and ``mlflow models serve`` validate requests.
    """
    import mlflow.onnx
    import numpy as np
    import onnx

    rows = np.asarray(example, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"the ONNX input example must be feature rows [N, F] with N >= 1, got shape {rows.shape}.")
    info = mlflow.onnx.log_model(
        onnx.load_from_string(onnx_bytes),
        name=name,
        signature=feature_signature(rows.shape[1]),
        input_example={"features": rows},
        # The device runs on CPU; without this MLflow asks for CUDA first and warns that it is missing.
        onnx_execution_providers=["CPUExecutionProvider"],
        pip_requirements=_pins("onnx", "onnxruntime", "numpy"),
    )
    return str(info.model_uri)


def register(model_uri: str, model_name: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` as a new version of ``model_name`` with ``tags``; return the version."""
    import mlflow

    try:
        version = mlflow.register_model(model_uri, model_name, tags=dict(tags))
    except Exception as exc:
        raise TrackingError(f"registering {model_uri} as {model_name!r} failed: {exc}") from exc
    return str(version.version)


def set_version_tags(model_name: str, version: str, tags: Mapping[str, str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def download_bundle(
    model_name: str, version: str | int, dest: str | os.PathLike[str], *, tracking_uri: str | None = None
) -> Path:
    """Fetch the shipped bundle of a registered version into ``dest`` (created) and validate it.

    Raises :class:`NotFound` when the version or its bundle does not exist.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or resolve_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise NotFound(
            f"model {model_name!r} version {version} is not registered at {uri}: {exc.message}. "
            "List versions with the MLflow UI or `mlflow models` and pass an existing one."
        ) from exc
    artifact = mv.tags.get(SHIPPED_BUNDLE_TAG)
    if not artifact or not mv.run_id:
        raise NotFound(
            f"model {model_name!r} version {version} has no '{SHIPPED_BUNDLE_TAG}' tag or run: it was not "
            "registered by `otaml train`. Retrain with `otaml train`."
        )
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".otaml-download-", dir=target.parent) as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=uri
            )
        except MlflowException as exc:
            raise NotFound(
                f"run {mv.run_id} of {model_name!r} v{version} has no artifact {artifact!r}: {exc.message}"
            ) from exc
        if target.exists():
            shutil.rmtree(target)
        shutil.move(local, target)
    bundle: Bundle = load_bundle(target)
    return bundle.path
