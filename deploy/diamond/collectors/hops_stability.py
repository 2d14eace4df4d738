"""Diamond collector shim: makes HOPS' StabilityCollector visible to Diamond.

Diamond imports every ``*.py`` in its ``collectors_path`` under the file's stem, so this
file is deliberately *not* called ``stability_collector.py`` (that would shadow the
installed ``stability_collector`` package it imports).  Install HOPS into the Python
that runs Diamond (``pip install hops``) and point ``collectors_path`` at this directory.
"""
try:
    from stability_collector.diamond_collector import StabilityCollector  # noqa: F401
except ImportError as exc:  # make Diamond's "Failed to import module" say what to do
    raise ImportError(
        "HOPS is not installed in the Python that runs Diamond: pip install hops "
        f"(or pip install -e /path/to/hops) into that environment ({exc})") from exc
