"""Vendor-neutral phantom QA: fBIRN stability metrics from a DICOM fMRI phantom series.

* :mod:`magickbox.qa.fbirn` — the metrics (Friedman & Glover 2006), vectorised numpy;
* :mod:`magickbox.qa.loader` — one phantom series from a directory, in any of the
  layouts scanners write (classic, Siemens mosaic and XA variants, enhanced multi-frame);
* :mod:`magickbox.qa.phantom` — a synthetic phantom with known truth, written as DICOM;
* :mod:`magickbox.qa.measures` — ``measures.json`` and the metric-safe scanner/coil names;
* :mod:`magickbox.qa.report` — figures, the one-page report, a Secondary Capture of it;
* :mod:`magickbox.qa.bucket` — the ``ProcQA`` bucket (``python -m magickbox.qa.bucket
  INPUT OUTPUT [MEMORY]``); the installable bucket directory is ``magickbox/qa/procqa/``.

Nothing here is imported by the node itself: numpy and matplotlib load only in QA jobs
and in ``magickbox qa ...`` commands.
"""
