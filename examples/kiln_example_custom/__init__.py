"""Custom training code for examples/custom-entrypoint.yaml (importable next to the manifest)."""
