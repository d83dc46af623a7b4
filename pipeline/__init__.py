"""otaml's data-science side: telemetry, detectors, evaluation, ONNX export and MLflow tracking."""
