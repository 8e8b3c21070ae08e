"""Model bundles shipped inside the package (the embedded cadc-tiny)."""
