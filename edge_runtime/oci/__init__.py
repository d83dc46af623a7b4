"""OCI images for otaml: the pure core (:mod:`edge_runtime.oci.types`) and a registry read client
(:mod:`edge_runtime.oci.client`, over urllib3 for the device or httpx for the MLOps side). ``registry.oci``
extends both for writing (layout directories, pushing).

Everything is importable from here: ``from edge_runtime.oci import RegistryClient, Descriptor, select_platform``.
The two clients load their HTTP library only when first named (the device's agent never loads httpx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_runtime.oci.client import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    MAX_ERROR_BODY_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_REDIRECTS,
    MAX_SMALL_BLOB_BYTES,
    MAX_TOKEN_BYTES,
    ForbiddenHost,
    RegistryAuthError,
    RegistryReader,
    base_url_for,
)
from edge_runtime.oci.types import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    LABEL_BUNDLE_DIGEST,
    LABEL_DETECTOR,
    LABEL_MLFLOW_RUN_ID,
    LABEL_MODEL_NAME,
    LABEL_MODEL_VERSION,
    MANIFEST_ACCEPT,
    MANIFEST_TYPES,
    MODEL_PATH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Blob,
    Descriptor,
    Index,
    Manifest,
    Platform,
    Reference,
    canonical_json,
    check_digest,
    check_tag,
    config_labels,
    config_platform,
    is_index,
    load_json,
    parse_index,
    parse_manifest,
    parse_reference,
    select_platform,
    sha256_digest,
)

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_TYPES",
    "LABEL_BUNDLE_DIGEST",
    "LABEL_DETECTOR",
    "LABEL_MLFLOW_RUN_ID",
    "LABEL_MODEL_NAME",
    "LABEL_MODEL_VERSION",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "MAX_ERROR_BODY_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_REDIRECTS",
    "MAX_SMALL_BLOB_BYTES",
    "MAX_TOKEN_BYTES",
    "MODEL_PATH",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_MANIFEST",
    "Blob",
    "Descriptor",
    "ForbiddenHost",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryReader",
    "Urllib3RegistryClient",
    "base_url_for",
    "canonical_json",
    "check_digest",
    "check_tag",
    "config_labels",
    "config_platform",
    "is_index",
    "load_json",
    "parse_index",
    "parse_manifest",
    "parse_reference",
    "select_platform",
    "sha256_digest",
]

if TYPE_CHECKING:
    from edge_runtime.oci.httpx_client import RegistryClient
    from edge_runtime.oci.urllib3_client import Urllib3RegistryClient


def __getattr__(name: str) -> Any:
    if name == "RegistryClient":
        from edge_runtime.oci.httpx_client import RegistryClient

        return RegistryClient
    if name == "Urllib3RegistryClient":
        from edge_runtime.oci.urllib3_client import Urllib3RegistryClient

        return Urllib3RegistryClient
    raise AttributeError(f"module 'edge_runtime.oci' has no attribute {name!r}")
