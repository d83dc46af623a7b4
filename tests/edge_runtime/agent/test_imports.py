"""The agent process stays lean: no numpy, onnxruntime or FastAPI (its RSS goal is 40 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from pathlib import Path
from edge_runtime.agent.cli import build_reconciler
from edge_runtime.agent.config import AgentConfig
import edge_runtime.agent.loop
build_reconciler(AgentConfig(registry_url="http://127.0.0.1:1", repository="r", state_dir=Path(sys.argv[1])))
heavy = sorted(m for m in ("numpy", "onnxruntime", "fastapi", "uvicorn", "pydantic", "sklearn") if m in sys.modules)
print(",".join(heavy))
"""


def test_the_agent_imports_no_heavy_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == ""
