"""Magnitude baselines: ``magnitude:S`` / ``magnitude:N:M`` (|W| per output row) and
``magnitude_matrix:S`` (|W| over the whole matrix). No calibration, no weight update; the
selection rule is WANDA's (``masks.py``) with unit input norms."""

from __future__ import annotations

from sae_core.compression.wanda import WandaMethod


class MagnitudeMethod(WandaMethod):
    name = "magnitude"
    needs_calibration = False
    scoring = "row"


class MagnitudeMatrixMethod(WandaMethod):
    name = "magnitude_matrix"
    needs_calibration = False
    scoring = "matrix"
