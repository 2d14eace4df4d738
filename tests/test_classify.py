"""classifyRules.json: every operator, references, negation, SeriesLevel, malformed files,
and classification on the job record of a real node."""
from __future__ import annotations

import json

import pydicom
import pytest
from dicom_helpers import MagickboxProcess, make_study, storescu, write_bucket
from pydicom.dataset import Dataset

from magickbox.classify import ClassifyRules, RulesError, instance_lookup

MANUAL_EXAMPLE = [  # the rules printed in the MagickBox manual (duplicates included)
    {"type": "GE", "id": "GEBYMANUFACTURER", "description": "Scanner is GE",
     "rules": [{"tag": ["0x08", "0x70"], "value": "^GE MEDICAL SYSTEMS"}]},
    {"type": "axial", "description": "An axial scan",
     "rules": [{"tag": ["0x20", "0x37"], "value": [1, 0, 0, 0, 1, 0], "operator": "approx", "approxLevel": "0.0004"}]},
    {"type": "coronal", "description": "A coronal scan",
     "rules": [{"tag": ["0x20", "0x37"], "value": [1, 0, 0, 0, 0, -1], "operator": "approx"}]},
    {"type": "sagittal", "description": "A sagittal scan",
     "rules": [{"tag": ["0x20", "0x37"], "value": [0, 1, 0, 0, 0, -1], "operator": "approx"}]},
    {"type": "T1", "description": "GE EFGRE3D with more than 100 files",
     "rules": [{"rule": "GEBYMANUFACTURER"}, {"tag": ["0x19", "0x109e"], "value": "EFGRE3D"},
               {"tag": ["NumFiles"], "operator": ">", "value": "100"}]},
    {"type": "T2", "description": "A T2 weighted image",
     "rules": [{"rule": "GEBYMANUFACTURER"}, {"tag": ["0x19", "0x109c"], "operator": "regexp", "value": "Cube"}]},
    {"type": "fMRI", "description": "b-value",
     "rules": [{"rule": "GEBYMANUFACTURER"}, {"tag": ["0x43", "0x1039", "0"], "operator": "==", "value": "4000"}]},
    {"type": "oblique", "check": "SeriesLevel", "description": "Neither coronal, sagittal nor axial",
     "rules": [{"tag": ["ClassifyType"], "value": "axial", "operator": "contains", "negate": "yes"},
               {"tag": ["ClassifyType"], "value": "coronal", "operator": "contains", "negate": "yes"},
               {"tag": ["ClassifyType"], "value": "sagittal", "operator": "contains", "negate": "yes"}]},
]


def ds(**elements) -> Dataset:
    d = Dataset()
    for keyword, value in elements.items():
        setattr(d, keyword, value)
    return d


def classify(rules, record, dataset=None):
    return rules.evaluate(record, instance_lookup(dataset if dataset is not None else Dataset()))


def test_manual_example_rules():
    rules = ClassifyRules.parse(MANUAL_EXAMPLE)
    ge_axial = ds(Manufacturer="GE MEDICAL SYSTEMS", ImageOrientationPatient=[1, 0, 0.0003, 0, 1, 0])
    assert classify(rules, {"NumFiles": "3"}, ge_axial) == ["GE", "axial"]
    oblique = ds(Manufacturer="SIEMENS", ImageOrientationPatient=[0.9, 0.1, 0, 0, 1, 0])
    assert classify(rules, {"NumFiles": "1"}, oblique) == ["oblique"]
    # accumulate over instances; SeriesLevel 'oblique' disappears once axial is seen
    record = {"NumFiles": "2", "ClassifyType": ["oblique"]}
    assert classify(rules, record, ds(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])) == ["axial"]
    assert classify(rules, {"ClassifyType": ["axial"]}, ds(ImageOrientationPatient=[1, 0, 0, 0, 0, -1])) == \
        ["axial", "coronal"]


def test_private_tags_references_and_numfiles():
    rules = ClassifyRules.parse(MANUAL_EXAMPLE)
    t1 = ds(Manufacturer="GE MEDICAL SYSTEMS")
    t1.add_new((0x0019, 0x109E), "LO", "EFGRE3D")
    assert "T1" not in classify(rules, {"NumFiles": "100"}, t1)
    assert "T1" in classify(rules, {"NumFiles": "101"}, t1)
    siemens = ds(Manufacturer="SIEMENS")
    siemens.add_new((0x0019, 0x109E), "LO", "EFGRE3D")
    assert "T1" not in classify(rules, {"NumFiles": "500"}, siemens)        # the referenced GE rule fails
    cube = ds(Manufacturer="GE MEDICAL SYSTEMS")
    cube.add_new((0x0019, 0x109C), "LO", "Sag Cube T2")
    assert "T2" in classify(rules, {}, cube)
    bval = ds(Manufacturer="GE MEDICAL SYSTEMS")
    bval.add_new((0x0043, 0x1039), "IS", [4000, 0, 0, 0])
    assert "fMRI" in classify(rules, {}, bval)
    raw = ds(Manufacturer="GE MEDICAL SYSTEMS")           # unknown private VR in implicit VR: raw bytes
    raw.add_new((0x0043, 0x1039), "UN", b"4000\\0\\0\\0 ")
    assert "fMRI" in classify(rules, {}, raw)


@pytest.mark.parametrize("operator, value, tag_value, expected", [
    ("regexp", "^AX", "AXIAL T1", True),
    ("regexp", "^AX", "SAG", False),
    ("==", "2.5", "2.50", True),
    ("==", "abc", "abc", True),                         # text fallback
    ("!=", "2.5", "3", True),
    ("!=", "2.5", "2.5", False),
    ("<", "10", "9.9", True),
    ("<", "10", "10", False),
    (">", "10", "10.1", True),
    (">", "10", "not a number", False),
    ("exist", None, "", True),
    ("contains", "b", ["a", "b"], True),
    ("contains", "c", ["a", "b"], False),
    ("approx", [1, 2], ["1.00001", "2"], True),
    ("approx", [1, 2], ["1.1", "2"], False),
    ("approx", [1, 2], ["1"], False),
])
def test_each_operator(operator, value, tag_value, expected):
    rule = {"tag": ["Key"], "operator": operator}
    if value is not None:
        rule["value"] = value
    rules = ClassifyRules.parse([{"type": "X", "rules": [rule]}])
    assert (classify(rules, {"Key": tag_value}) == ["X"]) is expected
    negated = ClassifyRules.parse([{"type": "X", "rules": [{**rule, "negate": "yes"}]}])
    assert (classify(negated, {"Key": tag_value}) == ["X"]) is (not expected)


def test_exist_and_notexist_on_dicom_and_record_tags():
    rules = ClassifyRules.parse([
        {"type": "has-desc", "rules": [{"tag": ["0x0008", "0x103e"], "operator": "exist"}]},
        {"type": "no-contrast", "rules": [{"tag": ["0x0018", "0x0010"], "operator": "notexist"}]},
        {"type": "no-key", "rules": [{"tag": ["Missing"], "operator": "notexist"}]},
    ])
    assert classify(rules, {}, ds(SeriesDescription="")) == ["has-desc", "no-contrast", "no-key"]
    assert classify(rules, {"Missing": "1"}, ds(ContrastBolusAgent="Gd")) == []


def test_missing_tag_is_false_unless_negated_and_index_out_of_range():
    rules = ClassifyRules.parse([
        {"type": "A", "rules": [{"tag": ["0x0018", "0x0081"], "operator": ">", "value": "1"}]},
        {"type": "B", "rules": [{"tag": ["0x0018", "0x0081"], "operator": ">", "value": "1", "negate": "yes"}]},
        {"type": "C", "rules": [{"tag": ["0x0020", "0x0037", "9"], "operator": "exist"}]},
    ])
    assert classify(rules, {}, ds()) == ["B"]
    assert classify(rules, {}, ds(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])) == ["B"]


@pytest.mark.parametrize("data, message", [
    ({"type": "X"}, "expected a list of types"),
    ([{"rules": [{"tag": ["A"], "value": "1"}]}], "type 1: missing 'type' name"),
    ([{"type": "X", "rules": []}], "type 1 ('X'): 'rules' must be a non-empty list"),
    ([{"type": "X", "rules": [{"value": "1"}]}], "type 1 ('X'), rule 1: needs 'tag' and 'value'"),
    ([{"type": "X", "rules": [{"tag": ["0x08", "0x70"], "operator": "~", "value": "1"}]}],
     "type 1 ('X'), rule 1: unknown operator '~'"),
    ([{"type": "X", "rules": [{"tag": ["0xZZ", "0x70"], "value": "1"}]}], "tag group '0xZZ' is not a hex number"),
    ([{"type": "X", "rules": [{"tag": ["0x08", "0x70", "-1"], "value": "1"}]}], "tag index '-1' is negative"),
    ([{"type": "X", "rules": [{"tag": ["A"], "value": "("}]}], "bad regular expression '('"),
    ([{"type": "X", "rules": [{"tag": ["A"], "operator": ">", "value": "big"}]}], "needs a numeric value"),
    ([{"type": "X", "rules": [{"tag": ["A"], "operator": "approx", "value": ["a"]}]}], "list of numbers"),
    ([{"type": "X", "rules": [{"tag": ["A"], "operator": "=="}]}], "operator '==' needs a 'value'"),
    ([{"type": "X", "rules": [{"rule": "NOPE"}]}], "type 'X', rule 1: references unknown rule id 'NOPE'"),
    ([{"type": "X", "id": "A", "rules": [{"rule": "B"}]}, {"type": "Y", "id": "B", "rules": [{"rule": "A"}]}],
     "reference cycle A -> B -> A"),
    ([{"type": "X", "id": "A", "rules": [{"tag": ["K"], "value": "1"}]},
      {"type": "Y", "id": "A", "rules": [{"tag": ["K"], "value": "1"}]}], "duplicate id 'A'"),
    ([{"type": "X", "check": "Study", "rules": [{"tag": ["K"], "value": "1"}]}], "'check' must be \"SeriesLevel\""),
])
def test_malformed_rules_name_the_type_and_rule(data, message):
    with pytest.raises(RulesError) as info:
        ClassifyRules.parse(data, "classifyRules.json")
    assert message in str(info.value) and str(info.value).startswith("classifyRules.json")


def test_malformed_json_file_names_line(tmp_path):
    path = tmp_path / "classifyRules.json"
    path.write_text('[{"type": "X",\n "rules": [}]')
    with pytest.raises(RulesError) as info:
        ClassifyRules.load(path)
    assert "not valid JSON: line 2" in str(info.value)


def test_classification_reaches_series_record_and_job(tmp_path):
    data = tmp_path / "node"
    write_bucket(data / "buckets", "ProcQA")
    (data / "classifyRules.json").write_text(json.dumps(MANUAL_EXAMPLE + [
        {"type": "MR", "rules": [{"tag": ["0x0008", "0x0060"], "value": "^MR$"}]},
        {"type": "big-series", "check": "SeriesLevel",
         "rules": [{"tag": ["NumFiles"], "operator": ">", "value": "4"}]},
    ]))
    node = MagickboxProcess(data, quiet_seconds=1).start()
    try:
        axial = make_study(tmp_path / "ax", 5, ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                           Manufacturer="GE MEDICAL SYSTEMS")
        tilted = make_study(tmp_path / "ob", 3, study_uid=pydicom.dcmread(axial[0]).StudyInstanceUID,
                            ImageOrientationPatient=[0.8, 0.6, 0, 0, 0, -1], Manufacturer="GE MEDICAL SYSTEMS")
        storescu(node.dicom_port, "ProcQA", axial + tilted)
        job = node.wait_jobs(1)[0]
        by_series = job["classification"]
        ax_series = pydicom.dcmread(axial[0]).SeriesInstanceUID
        ob_series = pydicom.dcmread(tilted[0]).SeriesInstanceUID
        assert by_series[ax_series] == ["GE", "axial", "MR", "big-series"]
        assert by_series[ob_series] == ["GE", "MR", "oblique"]
        record = json.loads((data / "views" / "raw" / job["study_uid"] / f"{ax_series}.json").read_text())
        assert record["NumFiles"] == "5" and record["ClassifyType"] == by_series[ax_series]
        assert record["Modality"] == "MR" and record["SeriesInstanceUID"] == ax_series
    finally:
        node.stop()
