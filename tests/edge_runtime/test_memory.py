from __future__ import annotations

import sys

import pytest

from edge_runtime.memory import limit_malloc_arenas, release_startup_pages
from edge_runtime.metrics import process_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc/Linux only")
def test_release_startup_pages_lowers_file_backed_rss() -> None:
    import numpy  # noqa: F401  (make sure some library pages are resident)

    before = process_memory()["file"]
    released = release_startup_pages()
    after = process_memory()["file"]
    assert released > 0
    assert after < before
    assert limit_malloc_arenas(2) is True
