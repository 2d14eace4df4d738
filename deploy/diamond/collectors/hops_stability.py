"""Diamond collector shim: makes HOPS' StabilityCollector visible to Diamond.

Diamond imports every ``*.py`` in its ``collectors_path`` under the file's stem, so this
file is deliberately *not* called ``stability_collector.py`` (that would shadow the
installed ``stability_collector`` package it imports).  Install HOPS into the Python
that runs Diamond (the distribution is ``hops-mri``; see the README's Diamond steps) and point ``collectors_path`` at this directory.
"""
try:
    from stability_collector.diamond_collector import StabilityCollector  # noqa: F401
except ImportError as exc:  # make Diamond's "Failed to import module" say what to do
    raise ImportError(
        "HOPS is not installed in the Python that runs Diamond: pip install hops-mri "
        f"(from a clone: pip install /path/to/hops) into that environment ({exc})") from exc
