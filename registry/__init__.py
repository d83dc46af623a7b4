"""otaml's MLOps side: promotion with gates, OCI image baking and pushing, signing."""
