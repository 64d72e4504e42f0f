"""Hand-run benchmarks of the geoetl engine against a private local stack (see bench/README.md)."""
