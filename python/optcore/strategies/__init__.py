"""Strategies and meta-algorithms (SPEC §5)."""
from . import pretraining  # noqa: F401  (nnstrat: supervised pretraining, 8.7.4)
