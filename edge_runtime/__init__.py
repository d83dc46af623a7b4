"""otaml's device side: the model bundle contract, shared features, the scoring server and the OTA agent.

Never imports ``pipeline``, ``registry``, mlflow, scikit-learn or pandas: it must run on a device
with only the ``edge`` extra installed.
"""

__version__ = "0.1.0"
