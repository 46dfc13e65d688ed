"""The reference worker service that the Procfile runs: ``jsqueue worker -A worker.app:app``."""
