"""Export: one backend-neutral core (core.py) and a thin module per backend."""
