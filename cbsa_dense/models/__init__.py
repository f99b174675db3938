"""Models: encoders (declare their outputs), heads and necks (built from those), and the two assemblies,
:class:`Segmentor` and :class:`Detector`."""

from cbsa_dense.models import encoders, heads, necks
from cbsa_dense.models.detector import Detector
from cbsa_dense.models.segmentor import Segmentor

__all__ = ["Detector", "Segmentor", "encoders", "heads", "necks"]
