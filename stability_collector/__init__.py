"""HOPS phantom stability monitoring: parse MGH Stability reports and deliver their
values to Graphite, time-stamped with the scan time.

Pipeline (one module per stage): :mod:`.report` (parse) → :mod:`.metrics` (name and
time-stamp) → :mod:`.delivery` (confirmed send) → :mod:`.archive` (move), driven by
:mod:`.ingest`; :mod:`.watch`, :mod:`.cli` and the Diamond collector are adapters.
"""
__version__ = "0.1.0"
