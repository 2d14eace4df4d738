"""HOPS DICOM processing node, modelled on MagickBox (receive → archive → classify →
queue → run → route / measure)."""
__version__ = "0.1.0"
