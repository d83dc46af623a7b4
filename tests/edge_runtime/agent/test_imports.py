"""The agent process stays lean: no numpy, onnxruntime or FastAPI, and one HTTP client (its RSS goal is 40 MB).

python-tuf's fetcher loads urllib3; the registry is read with it too, so httpx and its stack (httpcore, h11,
anyio, idna, http.cookiejar; click and rich when installed) never load in the agent.
"""

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
import edge_runtime.agent.fleet_link
import edge_runtime.fleet.reporter
import edge_runtime.trust.client
reconciler = build_reconciler(
    AgentConfig(registry_url="http://127.0.0.1:1", repository="r", state_dir=Path(sys.argv[1]))
)
print(type(reconciler.source.client).__name__)
heavy = ("numpy", "onnxruntime", "fastapi", "uvicorn", "pydantic", "sklearn", "httpx", "httpcore", "h11", "anyio")
loaded = {m.split(".")[0] for m in sys.modules} | ({"http.cookiejar"} & set(sys.modules))
print(",".join(sorted(m for m in (*heavy, "http.cookiejar") if m in loaded)))
"""


def test_the_agent_imports_no_heavy_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    client, heavy = done.stdout.splitlines()
    assert client == "Urllib3RegistryClient"
    assert heavy == ""
