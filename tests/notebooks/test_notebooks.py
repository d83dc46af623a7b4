"""The notebooks, executed top to bottom by a real Jupyter kernel against a temporary MLflow store.

Parameters are injected the papermill way: overrides are appended to the cell tagged ``parameters``.
Notebook 01 runs once per module (small synthetic data); notebook 02 runs after it on the same store.
The kernel is this interpreter running ipykernel, from a kernelspec written to a temporary directory (so no
user- or system-wide kernelspec can substitute another Python); each run appends a cell that prints the
kernel's ``sys.prefix``, and the tests check it is this interpreter's.
"""

from __future__ import annotations

import json
import time
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat import NotebookNode

from pipeline.detectors import DETECTORS
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXPLORE = NOTEBOOKS / "01_explore_and_train.ipynb"
PROMOTE = NOTEBOOKS / "02_promote_and_ship.ipynb"
FIELD = NOTEBOOKS / "03_field_feedback.ipynb"
MODEL = "nb-anomaly"
KERNEL_CHECK = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)"
CELL_TIMEOUT_S = 300
# Lenient limits: this tests the notebook's steps, not the gates (tests/registry/test_gates.py does).
LENIENT_GATES = """\
[default]
min_metrics = { test_f1 = 0.0 }
min_parity_agreement = 0.9
max_latency_p50_ms = 100.0
max_latency_p99_ms = 1000.0
latency_runs = 20
"""
IMPOSSIBLE_GATES = """\
[default]
min_metrics = { test_f1 = 1.5 }
latency_runs = 20
"""


def load(path: Path) -> NotebookNode:
    return nbformat.read(path, as_version=4)


def parameters_cell(nb: NotebookNode) -> NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def declared_parameters(nb: NotebookNode) -> set[str]:
    source = parameters_cell(nb).source
    return {line.split("=", 1)[0].strip() for line in source.splitlines() if "=" in line and not line.startswith("#")}


def with_parameters(nb: NotebookNode, **values: Any) -> NotebookNode:
    """A copy of ``nb`` whose parameters cell ends by assigning ``values`` (each must be a declared parameter).

    Like papermill's injected cell, the overrides follow the defaults, so undeclared-here parameters keep theirs.
    """
    unknown = set(values) - declared_parameters(nb)
    if unknown:
        raise ValueError(f"not parameters of this notebook: {sorted(unknown)}")
    copy = nbformat.from_dict(json.loads(json.dumps(nb)))
    cell = parameters_cell(copy)
    cell.source += "\n# injected by tests/notebooks\n" + "\n".join(
        f"{name} = {value!r}" for name, value in values.items()
    )
    copy.cells.append(nbformat.v4.new_code_cell(KERNEL_CHECK))
    return copy


KERNEL_NAME = "otaml-test"


def kernel_manager(cwd: Path) -> Any:
    """A kernel manager that can only start ``sys.executable -m ipykernel_launcher`` (spec kept in ``cwd``)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = cwd / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "otaml tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def execute(nb: NotebookNode, cwd: Path) -> NotebookNode:
    from nbclient import NotebookClient

    NotebookClient(
        nb,
        km=kernel_manager(cwd),
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    ).execute()
    return nb


def outputs(nb: NotebookNode) -> list[NotebookNode]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def text(nb: NotebookNode) -> str:
    """Everything the notebook printed or displayed as text or HTML."""
    parts = []
    for o in outputs(nb):
        if o.output_type == "stream":
            parts.append(o.text)
        for mime in ("text/plain", "text/html"):
            parts.append(o.get("data", {}).get(mime, ""))
    return "\n".join(parts)


def png_outputs(nb: NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def require_kernel() -> None:
    import importlib.util

    missing = [m for m in ("ipykernel", "nbclient", "jupyter_client") if importlib.util.find_spec(m) is None]
    require(not missing, f"a Jupyter kernel ({', '.join(missing)})", "pip install -e '.[dev]' (ipykernel, nbclient)")


def assert_ran_in_this_python(nb: NotebookNode) -> None:
    assert f"KERNEL_PREFIX={sys.prefix}" in text(nb), "the notebook kernel is not this venv's python"


@dataclass(frozen=True)
class Trained:
    nb: NotebookNode
    workdir: Path
    out: Path
    tracking_uri: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Notebook 01 executed once on 2 devices x 1 day of synthetic data, into a fresh sqlite MLflow store."""
    require_kernel()
    workdir = tmp_path_factory.mktemp("nb01")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    out = workdir / "out"
    nb = with_parameters(
        load(EXPLORE), devices=2, days=1.0, seed=0, model_name=MODEL, tracking_uri=uri, out_dir=str(out)
    )
    return Trained(execute(nb, workdir), workdir, out, uri)


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- the committed files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [EXPLORE, PROMOTE, FIELD], ids=lambda p: p.name)
def test_committed_notebook_is_valid_without_outputs_and_has_one_parameters_cell(path: Path) -> None:
    nb = load(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: clear outputs"
    assert parameters_cell(nb) is code[0]
    assert nb.metadata.kernelspec.name == "python3"
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= len(code) // 2  # every step is explained


def test_parameter_injection_refuses_names_the_notebook_does_not_declare() -> None:
    with pytest.raises(ValueError, match="devicez"):
        with_parameters(load(EXPLORE), devicez=2)


# -- executed --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_explore_and_train_registers_describes_and_plots(trained: Trained) -> None:
    assert_ran_in_this_python(trained.nb)
    versions = client(trained.tracking_uri).search_model_versions(f"name='{MODEL}'")
    detectors = {v.tags["detector"] for v in versions}
    assert detectors == set(DETECTORS)  # "all", the raw-value baseline included
    candidates = [v for v in versions if v.tags.get("candidate") == "true"]
    assert len(candidates) == 1
    (candidate,) = candidates
    assert candidate.tags["chosen"] == "true"  # pick="" hands on training's choice
    assert candidate.tags["detector"] in candidate.description
    assert "notebooks/01_explore_and_train.ipynb" in candidate.description
    # The sensor plot and the run comparison were drawn inline and saved.
    assert png_outputs(trained.nb) >= 2
    for name in ("sensors.png", "runs.png"):
        data = (trained.out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert len(data) > 10_000, name
    assert (trained.out / "telemetry.csv").stat().st_size > 0
    assert any((trained.out / "bundles").glob(f"{MODEL}-v{candidate.version}-*/*/model.json"))
    shown = text(trained.nb)
    assert "dev-01" in shown
    assert "dev-02" in shown
    assert f"version {candidate.version}" in shown


@pytest.mark.integration
def test_explore_and_train_on_your_own_unlabelled_file(trained: Trained) -> None:
    from pipeline.synth import synth_telemetry, write_telemetry

    frame = synth_telemetry(devices=2, days=1, seed=1).drop(columns=["label", "anomaly_kind"])
    data = write_telemetry(frame, trained.workdir / "own-data.csv")
    out = trained.workdir / "own-out"
    nb = with_parameters(
        load(EXPLORE),
        data_path=str(data),
        detectors="pca, autoencoder",
        model_name="nb-unlabelled",
        tracking_uri=trained.tracking_uri,  # the same store: skips creating a new database
        out_dir=str(out),
    )
    execute(nb, trained.workdir)
    versions = client(trained.tracking_uri).search_model_versions("name='nb-unlabelled'")
    assert {v.tags["detector"] for v in versions} == {"pca", "autoencoder"}
    (candidate,) = [v for v in versions if v.tags.get("candidate") == "true"]
    assert candidate.tags["selection_rule"] == "validation-alarm-rate-closest-to-nominal"
    assert not (out / "telemetry.csv").exists()  # the given file was used, not synthetic data
    assert "labels: False" in text(nb)
    assert (out / "runs.png").read_bytes().startswith(b"\x89PNG")  # alarm rates: there is no PR-AUC to plot


@pytest.mark.integration
def test_promote_without_an_image_registry_moves_the_alias_and_says_why_no_image(trained: Trained) -> None:
    gates = trained.workdir / "lenient-gates.toml"
    gates.write_text(LENIENT_GATES)
    nb = with_parameters(
        load(PROMOTE),
        model_name=MODEL,
        tracking_uri=trained.tracking_uri,
        channel="staging",
        approver="notebook-test",
        gates_file=str(gates),
    )
    execute(nb, trained.workdir)
    assert_ran_in_this_python(nb)

    mlflow = client(trained.tracking_uri)
    candidate = next(v for v in mlflow.search_model_versions(f"name='{MODEL}'") if v.tags.get("candidate") == "true")
    staged = mlflow.get_model_version_by_alias(MODEL, "staging")
    assert str(staged.version) == str(candidate.version)
    assert staged.tags["otaml.staging.approved_by"] == "notebook-test"
    recorded = json.loads(staged.tags["otaml.staging.gates"])
    assert recorded["passed"]
    assert {r["name"] for r in recorded["results"]} >= {"parity", "latency_p50"}
    shown = text(nb)
    assert "No image registry configured" in shown
    assert "no image was baked or pushed" in shown
    assert "latency_p99" in shown  # the gate table
    assert f"models:/{MODEL}@staging -> version {candidate.version}" in shown


@pytest.mark.integration
def test_promote_refused_by_the_gates_shows_them_and_moves_nothing(trained: Trained) -> None:
    from nbclient.exceptions import CellExecutionError

    gates = trained.workdir / "impossible-gates.toml"
    gates.write_text(IMPOSSIBLE_GATES)
    before = {a: v for a, v in client(trained.tracking_uri).get_registered_model(MODEL).aliases.items()}
    nb = with_parameters(
        load(PROMOTE),
        model_name=MODEL,
        tracking_uri=trained.tracking_uri,
        channel="production",
        approver="notebook-test",
        gates_file=str(gates),
    )
    with pytest.raises(CellExecutionError, match="PromotionRefused"):
        execute(nb, trained.workdir)
    assert "metric:test_f1" in text(nb)  # the failing gate was displayed before the cell stopped
    assert client(trained.tracking_uri).get_registered_model(MODEL).aliases == before


@pytest.mark.integration
def test_promote_with_an_image_registry_bakes_signs_pushes_and_shows_the_labels(
    trained: Trained, oci_registry: str, mqtt_broker: Any
) -> None:
    from edge_runtime.oci import LABEL_BUNDLE_DIGEST, LABEL_MODEL_NAME, LABEL_MODEL_VERSION, RegistryClient
    from registry.cosign import fetch_signatures, load_public_key, verify_signatures
    from registry.oci.refs import pinned
    from registry.signing import generate_keys
    from registry.tuf.site import TrustSite, init
    from tests.registry.oci.fakes import write_fake_base

    # A tiny two-platform base in an OCI layout: baking only needs an image to append the bundle layer to.
    base = trained.workdir / "base-layout"
    write_fake_base(base)
    keys = generate_keys(trained.workdir / "keys", overwrite=True)
    trust = init(trained.workdir / "trust", trained.workdir / "approvers", approvers=1, threshold=1)
    # The fleet runs v1 already (approved earlier): the candidate rolls out in waves with v1 as the stable version.
    from edge_runtime.trust.approval import Approval
    from registry.tuf import keys as tuf_keys

    first = Approval("production", MODEL, 1, "sha256:" + "1" * 64, 1000, "sha256:" + "2" * 64)
    TrustSite(trust.site.path).open().propose(first, tuf_keys.load_signer(trust.approver_keys[0]))
    # One device of the fleet reports its state to the broker (as its agent's fleet link would).
    from edge_runtime.fleet.messages import DeviceState
    from edge_runtime.fleet.reporter import Reporter
    from edge_runtime.fleet.settings import FleetSettings

    assert mqtt_broker.instance is not None
    host, port = mqtt_broker.instance
    device = FleetSettings(
        device_id="pi-a", broker_host=host, broker_port=port, password_file=mqtt_broker.password_file("pi-a")
    )
    with Reporter(device) as reporter:
        reporter.publish_state(DeviceState("pi-a", groups={"hw": "pi4"}, model=MODEL, version=1, phase="serving"))
        deadline = time.monotonic() + 10
        while reporter.stats().state_pending and time.monotonic() < deadline:
            time.sleep(0.05)
    gates = trained.workdir / "lenient-gates.toml"
    gates.write_text(LENIENT_GATES)
    repository = f"{oci_registry}/notebooks/runtime"
    nb = with_parameters(
        load(PROMOTE),
        model_name=MODEL,
        tracking_uri=trained.tracking_uri,
        channel="production",
        approver="notebook-test",
        gates_file=str(gates),
        image_repo=repository,
        base_image=pinned(f"oci:{base}:base"),
        signing_key=str(keys.private_key),
        trust_dir=str(trust.site.path),
        approval_key=str(trust.approver_keys[0]),
        rollout_waves="50,100",
        broker=f"{host}:{port}",
        broker_password_file=str(mqtt_broker.password_file("controller")),
    )
    execute(nb, trained.workdir)
    repo = TrustSite(trust.site.path).open()
    approval = repo.approvals()[-1]
    (record,) = repo.rollout_records()

    mlflow = client(trained.tracking_uri)
    shipped = mlflow.get_model_version_by_alias(MODEL, "production")
    version = str(shipped.version)
    assert shipped.tags.get("candidate") == "true"
    with RegistryClient(oci_registry, "notebooks/runtime") as registry:
        pushed, channel = registry.head_manifest(f"model-v{version}"), registry.head_manifest("production")
        assert pushed is not None
        assert channel is not None
        digest = pushed.digest
        assert channel.digest == digest
        labels = registry.image_labels("production", "linux", "arm64")
        claims = verify_signatures(
            fetch_signatures(registry, digest),
            load_public_key(keys.public_key),
            digest,
            model=MODEL,
            channel="production",
        )
    assert shipped.tags["otaml.production.image"] == f"{repository}@{digest}"
    assert (labels[LABEL_MODEL_NAME], labels[LABEL_MODEL_VERSION]) == (MODEL, version)
    assert claims.version == version
    assert (approval.model, str(approval.version), approval.digest) == (MODEL, version, digest)
    assert (record.model, str(record.version), record.waves, record.state) == (MODEL, version, (50, 100), "running")
    assert record.stable_version == 1
    shown = text(nb)
    assert record.rollout_id in shown
    assert "pi-a" in shown  # the fleet table, read back from the broker
    assert "No image registry configured" not in shown
    assert digest in shown
    assert labels[LABEL_BUNDLE_DIGEST] in shown  # the labels, read back from the registry, were displayed


@pytest.mark.integration
def test_field_feedback_compares_versions_logs_to_mlflow_and_decides_to_retrain(tmp_path: Path) -> None:
    """Notebook 03 on its own store: two trained versions served in-process, one with a shifted sensor."""
    from otaml.cmd_field import report

    require_kernel()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    nb = with_parameters(
        load(FIELD), devices=2, days=5.0, model_name="nb-field", tracking_uri=uri, out_dir=str(out), gateways=1
    )
    execute(nb, tmp_path)
    assert_ran_in_this_python(nb)
    printed = text(nb)
    assert "version 1: keep" in printed
    assert "version 2: RETRAIN" in printed
    assert "temperature: PSI >= 0.2 on 1 of 1 devices" in printed
    assert png_outputs(nb) == 2  # drift over time, one plot per version
    mlflow = client(uri)
    for version in ("1", "2"):
        tags = mlflow.get_model_version("nb-field", version).tags
        run = mlflow.get_run(tags["field_report_run"])
        assert run.data.tags["otaml.kind"] == "field"
        assert "field_anomaly_ratio" in run.data.metrics
    # The summaries file it wrote is what `otaml field report --from-file` reads.
    lines: list[str] = []
    assert report("nb-field", read_summaries(out / "summaries.jsonl"), log=False, out=lines.append) == 0
    assert "plant-b" in lines[0]


def read_summaries(path: Path) -> list[Any]:
    from registry.field import read_jsonl

    return list(read_jsonl(path))
