"""Convert a fitted detector pipeline to ONNX: input ``features`` (float32 [N, F]), output ``score`` (float32 [N]).

The whole pipeline goes through skl2onnx. The three detectors of :mod:`pipeline.detectors` have custom
converters registered here, built from skl2onnx's own converters for their parts plus a few ONNX nodes:

* iforest: one TreeEnsembleRegressor summing per-leaf path lengths, then ``2 ** (-sum / (n_trees * c(psi)))``,
  exactly :meth:`IsolationForestDetector.score_samples` (skl2onnx's own IsolationForest converter is
  correct but emits ~30 nodes per tree: seconds to convert, milliseconds per call on a device).
* pca: ``ReduceMean(((x - mean) @ P)²)``, one MatMul (which dynamic int8 quantization rewrites).
* autoencoder: skl2onnx's MLPRegressor, then ``ReduceMean((x - mlp(x))²)``.
* kmeans: ``Max(ReduceMin(||x||² - 2 x Cᵀ + ||c||²), 0) / d``, one MatMul against the centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.algebra.onnx_ops import (
    OnnxAdd,
    OnnxDiv,
    OnnxIdentity,
    OnnxMatMul,
    OnnxMax,
    OnnxMul,
    OnnxReduceMeanApi18,
    OnnxReduceMin_13,
    OnnxReduceSumSquareApi18,
    OnnxReshapeApi13,
    OnnxSub,
)
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from edge_runtime.errors import OtamlError
from pipeline.detectors import (
    AutoencoderDetector,
    IsolationForestDetector,
    KMeansDistanceDetector,
    PCAReconstructionDetector,
)

OPSET = 17  # the highest opset asked for; a graph may declare a lower one
ML_OPSET = 3
INPUT_NAME = "features"
OUTPUT_NAME = "score"


class ExportError(OtamlError):
    """A fitted pipeline could not be converted to a valid ONNX graph."""


@dataclass(frozen=True)
class ExportedModel:
    """A serialized ONNX model and what a bundle records about it."""

    onnx_bytes: bytes
    opset: int
    n_features: int

    @property
    def size(self) -> int:
        return len(self.onnx_bytes)


def _score_shape(operator: object) -> None:
    n = operator.inputs[0].get_first_dimension()  # type: ignore[attr-defined]
    operator.outputs[0].type = FloatTensorType([n])  # type: ignore[attr-defined]


def _finish(scope: object, operator: object, container: object, per_row: object) -> None:
    opv = container.target_opset  # type: ignore[attr-defined]
    flat = OnnxReshapeApi13(per_row, np.array([-1], dtype=np.int64), op_version=opv)
    out = OnnxIdentity(flat, op_version=opv, output_names=operator.outputs[:1])  # type: ignore[attr-defined]
    out.add_to(scope, container)


def _path_length_correction(n: np.ndarray) -> np.ndarray:
    """c(n): the average path length of an unsuccessful search in a binary tree of n samples (Liu et al.)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value: ``x32 <= t`` holds exactly when ``x32 <= result``."""
    down = values.astype(np.float32)
    over = down.astype(np.float64) > values
    down[over] = np.nextafter(down[over], np.float32(-np.inf))
    return down


def _iforest_ensemble(est: IsolationForestDetector) -> dict[str, object]:
    """One TreeEnsembleRegressor (SUM) whose leaves hold ``depth + c(leaf samples)``: the sum is the total path length.

    skl2onnx's own converter emits ~27 nodes per tree (3,000 for 100 trees), which takes seconds to
    convert and milliseconds per call; this graph is one node and gives the same numbers.
    """
    forest = est.forest_
    attrs: dict[str, list[object]] = {
        k: []
        for k in [
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        ]
    }
    for tree_id, (tree, features) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        t = tree.tree_
        left, right = t.children_left, t.children_right
        depth = np.zeros(t.node_count, dtype=np.float64)
        for node in range(t.node_count):  # children always have larger ids than their parent
            if left[node] != -1:
                depth[left[node]] = depth[right[node]] = depth[node] + 1
        leaf = left == -1
        value = depth + _path_length_correction(t.n_node_samples)
        thresholds = _float32_at_most(t.threshold)
        for node in range(t.node_count):
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(node)
            attrs["nodes_featureids"].append(int(features[t.feature[node]]) if not leaf[node] else 0)
            attrs["nodes_values"].append(float(thresholds[node]) if not leaf[node] else 0.0)
            attrs["nodes_modes"].append("LEAF" if leaf[node] else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(int(left[node]) if not leaf[node] else 0)
            attrs["nodes_falsenodeids"].append(int(right[node]) if not leaf[node] else 0)
            if leaf[node]:
                attrs["target_treeids"].append(tree_id)
                attrs["target_nodeids"].append(node)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(value[node]))
    return {**attrs, "n_targets": 1, "aggregate_function": "SUM", "post_transform": "NONE"}


def _convert_iforest(scope: object, operator: object, container: object) -> None:
    est: IsolationForestDetector = operator.raw_operator  # type: ignore[attr-defined]
    forest = est.forest_
    x = operator.inputs[0].full_name  # type: ignore[attr-defined]
    name = scope.get_unique_variable_name  # type: ignore[attr-defined]
    node = scope.get_unique_operator_name  # type: ignore[attr-defined]
    add = container.add_node  # type: ignore[attr-defined]
    total = name("path_length_sum")
    add(
        "TreeEnsembleRegressor",
        [x],
        [total],
        op_domain="ai.onnx.ml",
        op_version=ML_OPSET,
        name=node("Trees"),
        **_iforest_ensemble(est),
    )
    # score = 2 ** (-total / (n_trees * c(max_samples))), as IsolationForest.score_samples (negated) computes it.
    denominator = len(forest.estimators_) * float(_path_length_correction(np.array([forest._max_samples]))[0])
    factor, two, shape = name("neg_inv_denominator"), name("two"), name("flat")
    container.add_initializer(factor, onnx.TensorProto.FLOAT, [], [-1.0 / denominator])  # type: ignore[attr-defined]
    container.add_initializer(two, onnx.TensorProto.FLOAT, [], [2.0])  # type: ignore[attr-defined]
    container.add_initializer(shape, onnx.TensorProto.INT64, [1], [-1])  # type: ignore[attr-defined]
    exponent, power = name("exponent"), name("power")
    add("Mul", [total, factor], [exponent], name=node("Mul"))
    add("Pow", [two, exponent], [power], name=node("Pow"))
    add("Reshape", [power, shape], [operator.outputs[0].full_name], name=node("Reshape"))  # type: ignore[attr-defined]


def _mean_square(diff: object, opv: int) -> object:
    return OnnxReduceMeanApi18(OnnxMul(diff, diff, op_version=opv), axes=[1], keepdims=0, op_version=opv)


def _convert_pca(scope: object, operator: object, container: object) -> None:
    est: PCAReconstructionDetector = operator.raw_operator  # type: ignore[attr-defined]
    opv = container.target_opset  # type: ignore[attr-defined]
    x = operator.inputs[0]  # type: ignore[attr-defined]
    centred = OnnxSub(x, est.mean_.astype(np.float32), op_version=opv)
    residual = OnnxMatMul(centred, est.projection_.astype(np.float32), op_version=opv)
    _finish(scope, operator, container, _mean_square(residual, opv))


def _convert_autoencoder(scope: object, operator: object, container: object) -> None:
    est: AutoencoderDetector = operator.raw_operator  # type: ignore[attr-defined]
    opv = container.target_opset  # type: ignore[attr-defined]
    x = operator.inputs[0]  # type: ignore[attr-defined]
    # skl2onnx's MLPRegressor converter flattens its output; restore [N, F].
    recon = OnnxReshapeApi13(
        OnnxSubEstimator(est.mlp_, x, op_version=opv),
        np.array([-1, est.n_features_in_], dtype=np.int64),
        op_version=opv,
    )
    _finish(scope, operator, container, _mean_square(OnnxSub(x, recon, op_version=opv), opv))


def _convert_kmeans(scope: object, operator: object, container: object) -> None:
    est: KMeansDistanceDetector = operator.raw_operator  # type: ignore[attr-defined]
    opv = container.target_opset  # type: ignore[attr-defined]
    x = operator.inputs[0]  # type: ignore[attr-defined]
    centres = est.centres_
    x_norm = OnnxReduceSumSquareApi18(x, axes=[1], keepdims=1, op_version=opv)  # [N, 1]
    cross = OnnxMatMul(x, (-2.0 * centres.T).astype(np.float32), op_version=opv)  # [N, K]
    squared = OnnxAdd(
        OnnxAdd(x_norm, cross, op_version=opv), (centres**2).sum(axis=1).astype(np.float32), op_version=opv
    )
    # ReduceMin takes its axes as an attribute up to opset 17 (the highest we ask for).
    nearest = OnnxReduceMin_13(squared, axes=[1], keepdims=0, op_version=opv)
    clipped = OnnxMax(nearest, np.array([0.0], dtype=np.float32), op_version=opv)
    per_row = OnnxDiv(clipped, np.array([float(centres.shape[1])], dtype=np.float32), op_version=opv)
    _finish(scope, operator, container, per_row)


_REGISTERED = False


def _register_converters() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    for cls, alias, converter in (
        (IsolationForestDetector, "OtamlIsolationForestDetector", _convert_iforest),
        (PCAReconstructionDetector, "OtamlPCAReconstructionDetector", _convert_pca),
        (AutoencoderDetector, "OtamlAutoencoderDetector", _convert_autoencoder),
        (KMeansDistanceDetector, "OtamlKMeansDistanceDetector", _convert_kmeans),
    ):
        update_registered_converter(cls, alias, _score_shape, converter)
    _REGISTERED = True


def export_onnx(pipeline: Pipeline, n_features: int) -> ExportedModel:
    """Convert a fitted detector pipeline; the result passes ``onnx.checker`` and has the fixed I/O names."""
    _register_converters()
    try:
        model = convert_sklearn(
            pipeline,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            final_types=[(OUTPUT_NAME, FloatTensorType([None]))],
            target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        )
    except Exception as exc:  # skl2onnx raises bare RuntimeError/TypeError/NotImplementedError
        raise ExportError(f"converting {pipeline.steps[-1][1]!r} to ONNX failed: {exc}") from exc
    check_model(model)
    data = model.SerializeToString()
    return ExportedModel(onnx_bytes=data, opset=declared_opset(data), n_features=n_features)


def declared_opset(onnx_bytes: bytes) -> int:
    """The default-domain opset a serialized model declares (skl2onnx lowers it to what the ops need)."""
    model = onnx.load_from_string(onnx_bytes)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` plus the I/O contract: one float input ``features`` [N, F], one float output ``score`` [N]."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX graph is invalid: {exc}") from exc
    inputs = [(i.name, len(i.type.tensor_type.shape.dim)) for i in model.graph.input]
    outputs = [(o.name, len(o.type.tensor_type.shape.dim)) for o in model.graph.output]
    if inputs != [(INPUT_NAME, 2)] or outputs != [(OUTPUT_NAME, 1)]:
        raise ExportError(
            f"the exported graph has inputs {inputs} and outputs {outputs}; "
            f"expected [({INPUT_NAME!r}, 2)] and [({OUTPUT_NAME!r}, 1)]."
        )
