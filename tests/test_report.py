"""The stability report parser, on the real reference reports and on variations."""
from __future__ import annotations

import datetime as dt
import random

import pytest
from conftest import REFERENCE, TRUNCATED, good_reference_reports

from stability_collector.report import (
    SECTION_COLUMNS,
    SECTION_NAMES,
    ReportParseError,
    parse_report,
    read_report,
    scan_time_from_name,
)
from stability_collector.samples import render_report

REF = "Stability_20180910T090910.txt"


def ref_text(name: str = REF) -> str:
    return (REFERENCE / name).read_text()


def reparse(text: str, name: str = REF) -> object:
    return parse_report(text.encode("ascii"), f"/share/bay/{name}")


def error_of(text: str, name: str = REF) -> ReportParseError:
    with pytest.raises(ReportParseError) as info:
        reparse(text, name)
    return info.value


def test_reference_reports_parse_with_every_value_as_printed():
    for path in good_reference_reports():
        report = read_report(path)
        assert (report.slices, report.measurements) == (16, 500)
        lines = path.read_text().splitlines()
        # every row of every section is reproduced exactly (text keeps all digits)
        for name in SECTION_NAMES:
            table = report.section(name)
            assert table.columns == SECTION_COLUMNS[name]
            start = lines.index(f"Stability {name} results:") + 3
            for i, row in enumerate(lines[start:start + 16]):
                tokens = row.split()
                assert int(tokens[0]) == i + 1
                assert table.texts[i] == tuple(t.lstrip("+") for t in tokens[1:])
                assert table.values[i] == tuple(float(t) for t in tokens[1:])


def test_reference_specific_values_keep_full_precision():
    report = read_report(REFERENCE / "Stability_20180124T133423.txt")
    assert report.channels == 48
    fit = report.section("fit")
    assert fit.texts[0] == ("1049.345932", "-0.014401", "0.000008", "51.359993")
    assert fit.values[0][2] == 0.000008          # upstream sent this as 0.00
    assert report.section("SNR").values[15] == (165.43, 242.94, 203.91, 12.969, 6.360, 38.013)


def test_truncated_reference_report_names_line_and_expectation():
    with pytest.raises(ReportParseError) as info:
        read_report(REFERENCE / TRUNCATED)
    err = info.value
    assert err.source.endswith(TRUNCATED)
    assert err.line == 23            # the file has 22 lines; the SIfit section never starts
    assert "'Stability SIfit results:'" in err.expected
    assert "end of the file" in err.found
    assert str(err).startswith(f"{REFERENCE / TRUNCATED}:23: expected 'Stability SIfit results:'")


@pytest.mark.parametrize("name, expected", [
    ("Stability_20180910T090910.txt", dt.datetime(2018, 9, 10, 9, 9, 10)),
    ("Stability_2024-04-01T09-10-11.txt", dt.datetime(2024, 4, 1, 9, 10, 11)),
    ("stability_2024-04-01T09-10-11.TXT", dt.datetime(2024, 4, 1, 9, 10, 11)),
    ("Stability_20180910T090910~2.txt", dt.datetime(2018, 9, 10, 9, 9, 10)),
])
def test_both_file_name_forms(name, expected):
    assert scan_time_from_name(f"/x/{name}") == expected
    assert reparse(ref_text(), name).scan_time == expected


@pytest.mark.parametrize("name", ["Stability_20181310T090910.txt", "Stability_2018-09-10 09:09:10.txt",
                                  "Stability_20180910.txt", "Stability_20180910T090910.txt.bak",
                                  "Stability_2018-02-30T09-10-11.txt"])
def test_bad_file_names_are_parse_errors(name):
    err = error_of(ref_text(), name)
    assert err.line is None and name in str(err) and "file name" in str(err)


def test_crlf_and_trailing_blank_lines_and_no_trailing_blank_lines():
    base = reparse(ref_text())
    crlf = reparse(ref_text().replace("\n", "\r\n"))
    trailing = reparse(ref_text() + "\n\n\n   \n")
    stripped = reparse(ref_text().rstrip("\n") + "\n")
    for other in (crlf, trailing, stripped):
        assert other.sections == base.sections


@pytest.mark.parametrize("slices, measurements, channels", [(1, 1, 1), (1, 200, 20), (3, 50, 64), (40, 1000, 48),
                                                            (120, 10, 2)])
def test_any_configuration(slices, measurements, channels):
    text = render_report(slices, measurements, channels, 500.0, 200.0, -0.003, 2.5, random.Random(1))
    report = reparse(text)
    assert (report.slices, report.measurements, report.channels) == (slices, measurements, channels)
    for name in SECTION_NAMES:
        assert len(report.section(name).values) == slices
    if slices == 1:   # the singular spelling is accepted too
        singular = "Stability configuration: 1 slice, 1 measurement, 1 channel" + text[text.index("\n"):]
        assert reparse(singular).slices == 1


def test_right_aligned_slice_numbers_with_spaces_and_tabs():
    text = ref_text().replace(" 1\t", "   1\t").replace("\t", " \t")
    assert reparse(text).section("SI").values[0][0] == 402.36


def _replace_line(text: str, line_no: int, new: str | None) -> str:
    lines = text.split("\n")
    if new is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = new
    return "\n".join(lines)


def test_bad_number_names_line_column_and_token():
    # line 7 is SI row 2
    text = _replace_line(ref_text(), 7, " 2\t414.14\t415.4x2\t414.74\t0.239\t0.058\t0.309")
    err = error_of(text)
    assert err.line == 7
    assert "column 'max'" in err.expected and "row 2 of 16 of the SI section" in err.expected
    assert "'415.4x2'" in err.found


def test_missing_row_is_reported_at_the_line_where_it_should_be():
    text = _replace_line(ref_text(), 7, None)   # drop SI row 2
    err = error_of(text)
    assert err.line == 7 and "slice number 2" in err.expected and "'3'" in err.found


def test_missing_last_row_of_a_section():
    lines = ref_text().split("\n")
    i = lines.index("Stability SNR results:") + 3 + 15   # SNR row 16
    del lines[i]
    err = error_of("\n".join(lines))
    assert err.line == i + 1
    assert "row 16 of 16 of the SNR section" in err.expected and err.found == "an empty line"


def test_extra_row_is_a_wrong_row_count():
    lines = ref_text().split("\n")
    i = lines.index("Stability ghost results:") + 3 + 16
    lines.insert(i, "17\t2.67\t2.90\t2.75\t0.038\t1.378\t8.543")
    err = error_of("\n".join(lines))
    assert err.line == i + 1
    assert "blank line after the 16 rows of the ghost section" in err.expected


def test_extra_row_after_the_last_section():
    text = ref_text().rstrip("\n") + "\n17\t+1.0\t+1.0\t+1.0\t+1.0\n"
    err = error_of(text)
    assert err.line == 106 and "fit section" in err.expected


def test_wrong_column_count():
    text = _replace_line(ref_text(), 6, " 1\t402.36\t403.65\t402.89\t0.255\t0.063")
    err = error_of(text)
    assert err.line == 6 and "7 tab-separated fields" in err.expected and "6 fields" in err.found


def test_bad_config_line_and_header():
    err = error_of(_replace_line(ref_text(), 1, "Stability configuration: sixteen slices"))
    assert err.line == 1 and "Stability configuration: <S> slices" in err.expected
    err = error_of(_replace_line(ref_text(), 5, "slice#\tmin\tmax\tmean\tsd"))
    assert err.line == 5 and "header row" in err.expected
    err = error_of(_replace_line(ref_text(), 1, "Stability configuration: 0 slices, 500 measurements, 32 channels"))
    assert err.line == 1 and "between 1 and" in err.expected


def test_sections_out_of_order():
    text = ref_text().replace("Stability SIfit results:", "Stability SNX results:")
    err = error_of(text)
    assert err.line == 24 and "'Stability SIfit results:'" in err.expected


def test_file_cut_mid_number_is_not_accepted():
    text = ref_text().rstrip("\n")
    cut = text[:-3]                        # "...+15.093" without the final line break
    err = error_of(cut)
    assert err.line == 105 and "line break after the last row" in err.expected
    # complete content but without the final newline is equally suspicious
    assert error_of(text).line == 105


def test_empty_binary_and_non_ascii_files():
    assert error_of("").line == 1
    with pytest.raises(ReportParseError) as info:
        parse_report(b"Stability configuration: 16 slices\n\xff\xfe", "/x/" + REF)
    assert info.value.line == 2 and "ASCII" in info.value.expected


def test_infinite_value_rejected():
    text = _replace_line(ref_text(), 6, " 1\t402.36\t1e999\t402.89\t0.255\t0.063\t0.320")
    err = error_of(text)
    assert err.line == 6 and "finite" in err.expected
