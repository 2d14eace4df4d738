"""measures.json: validation, metric paths without patient data, study-time stamps
(delivery by the node: tests/test_measure_stage.py)."""
from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from magickbox.results.measures import MeasuresError, SubjectPolicy, datapoint_lines, parse_measures, study_time

TZ = ZoneInfo("America/New_York")
HEADER = {"StationName": "MR-PRISMA 1", "DeviceSerialNumber": "166012", "PatientName": "Doe^Jane",
          "PatientID": "MRN778899", "AccessionNumber": "ACC4455", "PatientBirthDate": "19800101",
          "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "StudyDate": "20250107", "StudyTime": "073146",
          "AcquisitionDate": "20250107", "AcquisitionTime": "073512.250"}


def doc(**extra):
    return json.dumps({"version": 1, "measures": [{"name": "snr", "value": 101.5, "unit": ""},
                                                  {"name": "slice.12.sfnr", "value": 88}], **extra})


def test_default_path_and_study_time():
    lines = datapoint_lines(parse_measures(doc(), TZ), "ProcQA", HEADER, SubjectPolicy("station"), TZ)
    when = int(dt.datetime(2025, 1, 7, 7, 35, 12, tzinfo=TZ).timestamp())
    assert lines == [f"hops.measures.ProcQA.MR-PRISMA_1.snr 101.5 {when}",
                     f"hops.measures.ProcQA.MR-PRISMA_1.slice.12.sfnr 88.0 {when}"]


def test_time_precedence_and_no_processing_time():
    ms = parse_measures(json.dumps({"time": "2024-03-01T10:00:00", "measures": [
        {"name": "a", "value": 1}, {"name": "b", "value": 2, "time": "2024-03-02T10:00:00+00:00"}]}), TZ)
    lines = datapoint_lines(ms, "B", HEADER, SubjectPolicy("alias", alias="scanner1"), TZ)
    assert lines[0].endswith(str(int(dt.datetime(2024, 3, 1, 10, tzinfo=TZ).timestamp())))
    assert lines[1].endswith(str(int(dt.datetime(2024, 3, 2, 10, tzinfo=dt.timezone.utc).timestamp())))
    no_time = {k: v for k, v in HEADER.items() if "Date" not in k and "Time" not in k}
    with pytest.raises(MeasuresError, match="never stamped with the processing time"):
        datapoint_lines(parse_measures(doc(), TZ), "B", no_time, SubjectPolicy("alias", alias="x"), TZ)
    assert study_time({"AcquisitionDateTime": "20250107073512.5+0100"}, TZ) == dt.datetime(
        2025, 1, 7, 7, 35, 12, tzinfo=dt.timezone(dt.timedelta(hours=1)))


@pytest.mark.parametrize("text, message", [
    ('{"measures": [{"name": "a b", "value": 1}]}', "measures[0]: 'name' must be"),
    ('{"measures": [{"name": "a", "value": "NaN"}]}', "measures[0] (a): 'value' must be a finite number"),
    ('{"measures": [{"name": "a", "value": 1e999}]}', "finite number"),
    ('{"measures": [{"name": "a", "value": 1}, {"name": "a", "value": 2}]}', "appears twice"),
    ('{"measures": [{"name": "a", "value": 1, "time": "yesterday"}]}', "is not ISO 8601"),
    ('{"version": 2, "measures": []}', "'version' 2 is not supported"),
    ('{"measures": [], "prefix": "hops..x"}', "'prefix' must be"),
    ('[1, 2', "not valid JSON at line 1"),
])
def test_invalid_measures_named(text, message):
    with pytest.raises(MeasuresError) as err:
        parse_measures(text, TZ, "out/measures.json")
    assert str(err.value).startswith("out/measures.json") and message in str(err.value), str(err.value)


def test_no_phi_value_can_reach_a_metric_path():
    """Every identifying value of the study, put wherever a bucket or a header could put
    it into a path (measure name, prefix, station name used as subject key), is refused."""
    identifying = ["Doe", "Jane", "MRN778899", "ACC4455", "19800101", "1.2.826.0.1.3680043.8.498.1"]
    allowed = ["hops.stability"]
    for value in identifying:
        token = value.replace(".", "_")
        for measure_set in (
                parse_measures(json.dumps({"measures": [{"name": f"x.{token}", "value": 1}]}), TZ),
                parse_measures(json.dumps({"prefix": f"hops.stability.{token}.32ch",
                                           "measures": [{"name": "snr", "value": 1}]}), TZ)):
            with pytest.raises(MeasuresError, match="refused"):
                datapoint_lines(measure_set, "ProcQA", HEADER, SubjectPolicy("station"), TZ, allowed)
        with pytest.raises(MeasuresError, match="refused"):
            datapoint_lines(parse_measures(doc(), TZ), "ProcQA", {**HEADER, "StationName": value},
                            SubjectPolicy("station"), TZ)
    # and what goes through holds none of them
    ok = datapoint_lines(parse_measures(doc(), TZ), "ProcQA", HEADER, SubjectPolicy("hash", salt="s"), TZ)
    for line in ok:
        path = line.split()[0].lower()
        assert not any(v.lower() in path for v in identifying + ["doe^jane"])


def test_prefix_needs_permission_and_serial_aliases():
    ms = parse_measures(doc(prefix="hops.stability.prisma1.32ch.fbirn"), TZ)
    with pytest.raises(MeasuresError, match="not allowed for bucket"):
        datapoint_lines(ms, "ProcQA", HEADER, SubjectPolicy(), TZ)
    lines = datapoint_lines(ms, "ProcQA", HEADER, SubjectPolicy(), TZ, ["hops.stability"])
    assert lines[0].startswith("hops.stability.prisma1.32ch.fbirn.snr ")
    policy = SubjectPolicy("serial", aliases={"166012": "prisma1"})
    assert datapoint_lines(parse_measures(doc(), TZ), "Q", HEADER, policy, TZ)[0].startswith("hops.measures.Q.prisma1.")
    unknown = datapoint_lines(parse_measures(doc(), TZ), "Q", {**HEADER, "DeviceSerialNumber": "9"}, policy, TZ)
    assert unknown[0].split(".")[3].startswith("h") and "9" != unknown[0].split(".")[3]


def test_prefix_patterns_check_only_what_comes_from_data():
    """A phantom named like the literal part of the site's pattern (PatientName
    PHANTOM^FBIRN) does not refuse ``...fbirn``; a ``*`` component that holds an
    identifying value does."""
    phantom = {**HEADER, "PatientName": "PHANTOM^FBIRN", "PatientID": "PHANTOM-QA"}
    pattern = ["hops.stability.*.*.fbirn"]
    ms = parse_measures(doc(prefix="hops.stability.prisma1.32ch.fbirn"), TZ)
    with pytest.raises(MeasuresError, match="identifying value"):
        datapoint_lines(ms, "ProcQA", phantom, SubjectPolicy(), TZ, ["hops.stability"])
    assert datapoint_lines(ms, "ProcQA", phantom, SubjectPolicy(), TZ, pattern)[0].startswith(
        "hops.stability.prisma1.32ch.fbirn.snr ")
    for prefix in ("hops.stability.prisma1.32ch.other", "hops.stability.prisma1.fbirn"):
        with pytest.raises(MeasuresError, match="not allowed"):
            datapoint_lines(parse_measures(doc(prefix=prefix), TZ), "ProcQA", phantom, SubjectPolicy(), TZ, pattern)
    with pytest.raises(MeasuresError, match="identifying value"):
        datapoint_lines(parse_measures(doc(prefix="hops.stability.phantom_qa.32ch.fbirn"), TZ), "ProcQA", phantom,
                        SubjectPolicy(), TZ, pattern)


@pytest.mark.parametrize("path, refused", [
    ("fluctuation_pct", False),            # the operator "Luc" is a word of a name, not a substring
    ("channel_snr", False),                # ... and "Ann"
    ("MRC35162", False),                   # a device serial inside a Siemens UID is not identifying
    ("doe_snr", True),                     # a word of the patient's name
    ("id.ab-1234", True),                  # the patient ID, however punctuated
    ("dob.1980-01-01", True),              # the birth date, however punctuated
    ("x.1.3.12.2.1107.5.2.32.35162.30000023.y", True),   # the study UID, whole
    ("x.1_3_12_2_1107_5_2_32_35162_30000023", True),      # ... or re-separated
    ("acc4455x", True),                    # the accession number inside a word
])
def test_identifying_values_are_matched_as_values_not_as_any_substring(path, refused):
    """Found in review: the check refused normal names (UID parts and 3-letter name parts
    matched as substrings) and missed re-punctuated identifiers."""
    from magickbox.results.measures import _check_path, phi_values
    phi = phi_values({"PatientName": "Doe^Jane", "PatientID": "AB1234", "PatientBirthDate": "19800101",
                      "OperatorsName": "Luc^Ann", "StudyInstanceUID": "1.3.12.2.1107.5.2.32.35162.30000023",
                      "AccessionNumber": "ACC4455"})
    if refused:
        with pytest.raises(MeasuresError, match="refused"):
            _check_path(path, phi)
    else:
        _check_path(path, phi)
