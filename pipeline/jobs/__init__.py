"""Ray jobs: thin layers that run the method library on a Ray cluster (local by default)."""
