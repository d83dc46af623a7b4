"""The runtime image drops packages the service never imports (Dockerfile.runtime); edge_runtime must not need them.

The image tests (tests/registry/test_runtime_image.py) run the pruned image for real; this catches the cheaper
mistake first: a module of edge_runtime that imports, or reaches through ``np.``, something the image removes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pruned_modules() -> set[str]:
    """Dotted names of the Python packages Dockerfile.runtime removes from /install/lib."""
    text = (ROOT / "Dockerfile.runtime").read_text().replace("\\\n", " ")
    match = re.search(r"cd /install/lib;\s*rm -rf ([^;]+);", text)
    assert match, "Dockerfile.runtime no longer prunes /install/lib with one rm -rf"
    modules = set()
    for path in match.group(1).split():
        if path == "bin" or ".dist-info" in path or "." in path.rsplit("/", 1)[-1]:
            continue  # console scripts, metadata, single files (shared libraries, test extension modules)
        modules.add(path.replace("/", "."))
    return modules


def imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy"):
            names.add(f"numpy.{node.attr}")
    return names


def test_the_prune_list_is_read() -> None:
    assert {"numpy.random", "onnxruntime.tools", "google", "pydantic.v1"} <= pruned_modules()


def test_edge_runtime_never_imports_what_the_image_prunes() -> None:
    pruned = pruned_modules()
    uses = []
    for path in sorted((ROOT / "edge_runtime").rglob("*.py")):
        for name in imported_names(ast.parse(path.read_text(), str(path))):
            if any(name == p or name.startswith(p + ".") for p in pruned):
                uses.append(f"{path.relative_to(ROOT)}: {name}")
    assert uses == [], "edge_runtime uses modules Dockerfile.runtime removes from the image"


def test_the_reader_sees_numpy_attribute_use() -> None:
    names = imported_names(ast.parse("import numpy as np\nx = np.random.default_rng(0)\nfrom pydantic.v1 import X"))
    assert {"numpy.random", "pydantic.v1", "pydantic.v1.X"} <= names
