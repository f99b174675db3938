"""Models: encoders (declare their outputs), heads and necks (built from those), and the two assemblies,
:class:`Segmentor` and :class:`Detector`.

The names below are imported from their modules on first use (:mod:`cbsa_dense.lazy`): a segmentation model
does not import the detector.
"""

from __future__ import annotations

from cbsa_dense.lazy import lazy_namespace

#: Public name -> the module defining it (a subpackage for ``encoders``, ``heads`` and ``necks``).
_HOMES = {
    "Detector": "cbsa_dense.models.detector",
    "Segmentor": "cbsa_dense.models.segmentor",
    "encoders": "cbsa_dense.models.encoders",
    "heads": "cbsa_dense.models.heads",
    "necks": "cbsa_dense.models.necks",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_namespace(__name__, _HOMES)
