"""The ``otaml`` command line: a thin layer over ``pipeline``, ``registry`` and ``edge_runtime``."""
