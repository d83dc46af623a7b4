from __future__ import annotations

import io
import json
import logging

from edge_runtime.jsonlog import configure_logging


def test_one_json_object_per_line_with_extra_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", stream)
        logging.getLogger("edge_runtime.test").info("hello\nworld", extra={"event": "greet", "n": 2})
        logging.getLogger("edge_runtime.test").debug("hidden at info")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("uvicorn.error").exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "hello\nworld"
    assert (first["level"], first["logger"], first["event"], first["n"]) == ("info", "edge_runtime.test", "greet", 2)
    assert first["ts"].endswith("Z")
    assert second["logger"] == "uvicorn.error"
    assert "RuntimeError: boom" in second["exc"]


def test_numpy_fields_print_as_plain_numbers() -> None:
    import numpy as np

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", stream)
        logging.getLogger("edge_runtime.test").info("scored", extra={"score": np.float32(0.25), "n": np.int64(3)})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    line = stream.getvalue().strip()
    assert json.loads(line)["score"] == 0.25
    assert json.loads(line)["n"] == 3
    assert '"score":0.25' in line
