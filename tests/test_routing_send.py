"""Routing rules (MagickBox's routing.json) and the storage SCU that sends results,
against dcmtk ``storescp`` as the receiving PACS."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import StorescpPeer, dataset_bytes, make_study
from pydicom.data import get_testdata_file

from magickbox.results.routing import RoutingContext, RoutingError, execute_plan, parse_rules, select_files
from magickbox.results.send import Destination, echo, read_part10_header, send_files
from stability_collector.localgraphite import free_port

# The example of the MagickBox manual (section 5.1), verbatim but for its one typo: the
# manual opens the list with "[ { {" (two braces) and leaves out the outer "{".
MANUAL_EXAMPLE = r'''{
"routing": [
 {
       "name": "Default Rule for OUTPUT to OsiriX",
       "AETitleIn": ".*",
       "status": 0,
       "send": [
                {
                        ".*": {
                                 "IP": "$me",
                                 "PORT": "$port",
                                 "AETitleSender": "ProcDefault",
                                 "AETitleTo": "OsiriX"
                        }
                }
       ],
       "break": 0
},
  {
    "name": "ProcRSI bucket routing of results",
    "AETitleIn": "ProcRSI",
    "AETitleFrom": "PACS",
    "send": [
        { "success": {
            "IP": "192.168.0.1",
            "PORT": "403",
            "AETitleSender": "me",
            "AETitleTo": "PACS",
            "break": 1,
            "which": [
               { "0008,103e": ".*" }
            ]
          },
          "failed": {
            "IP": "192.168.0.1",
            "PORT": "403",
            "AETitleSender": "me",
            "AETitleTo": "PACS",
            "break": 1
          },
          "partial": {
            "IP": "192.168.0.1",
            "PORT": "403",
            "AETitleSender": "me",
            "AETitleTo": "PACS",
            "break": 1
          }
        }
    ],
    "break": 0
 },
  {
       "name": "Route Input to PACS",
       "RouteDirectory": "INPUT", // default value is "OUTPUT"
       "AETitleIn": ".*",
       "enabled": "F",
       "send": [
               {
                        ".*": {
                                "IP": "$me",
                                "PORT": "$port",
                                "AETitleSender": "ProcDefault",
                                "AETitleTo": "PACS1"
                        }
               }
       ],
       "break": 0
 }
]
}'''


def test_manual_example_loads_and_behaves_as_documented():
    table = parse_rules(MANUAL_EXAMPLE)
    assert [r.name for r in table.rules] == ["Default Rule for OUTPUT to OsiriX", "ProcRSI bucket routing of results",
                                             "Route Input to PACS"]
    # status 0 and enabled "F" disable the first and the last rule
    assert [r.enabled for r in table.rules] == [False, True, False]
    assert table.rules[2].directory == "INPUT"
    # ProcRSI from PACS, success -> the "success" destination only
    plans = table.plan(RoutingContext("ProcRSI", "PACS", "success"))
    assert len(plans) == 1
    sends = plans[0].sends
    assert [(s.target.pattern, str(s.destination)) for s in sends] == [("success", "PACS@192.168.0.1:403")]
    assert sends[0].destination.calling_ae == "me" and sends[0].target.stop_after_success
    assert len(sends[0].target.which) == 1
    # failed and partial choose their own entry
    assert [s.target.pattern for s in table.plan(RoutingContext("ProcRSI", "PACS", "failed"))[0].sends] == ["failed"]
    assert [s.target.pattern for s in table.plan(RoutingContext("ProcRSI", "PACS", "partial"))[0].sends] == ["partial"]
    # another caller or bucket: no rule applies (the default rule is disabled)
    assert table.plan(RoutingContext("ProcRSI", "SCANNER", "success")) == []
    assert table.plan(RoutingContext("ProcOther", "PACS", "success")) == []
    # enabling the default rule: $me / $port become the node's address
    enabled = parse_rules(MANUAL_EXAMPLE.replace('"status": 0', '"status": 1'))
    plan = enabled.plan(RoutingContext("ProcX", "Y", "anything"), me=("10.1.2.3", 4104))
    assert [str(s.destination) for s in plan[0].sends] == ["OsiriX@10.1.2.3:4104"]
    explanation = "\n".join(table.explain(RoutingContext("ProcRSI", "SCANNER", "success")))
    assert "disabled" in explanation and "AETitleFrom 'PACS' does not match calling AE 'SCANNER'" in explanation


@pytest.mark.parametrize("mutation, message", [
    (lambda r: r.pop("AETitleIn"), "needs 'AETitleIn' or 'AETitleFrom'"),
    (lambda r: r.update(AETitleIn="Proc(["), "'AETitleIn' is not a valid regular expression"),
    (lambda r: r.update(AETitelIn="x"), "unknown key(s) ['AETitelIn']"),
    (lambda r: r.update(status=2), "'status' must be 0 or 1"),
    (lambda r: r.update(RouteDirectory="SIDEWAYS"), "'RouteDirectory' must be"),
    (lambda r: r["send"][0]["ok"].pop("AETitleTo"), "send entry 'ok': 'AETitleTo' is missing"),
    (lambda r: r["send"][0]["ok"].update(PORT="70000"), "'PORT' must be 1-65535"),
    (lambda r: r["send"][0]["ok"].update(which=[{"0008-103e": "x"}]), "is not a tag like"),
    (lambda r: r["send"][0]["ok"].update(retry={"count": -1}), "'retry.count' must be"),
])
def test_invalid_rules_are_refused_naming_rule_and_key(mutation, message):
    import json
    rule = {"name": "mine", "AETitleIn": "ProcA",
            "send": [{"ok": {"IP": "127.0.0.1", "PORT": "104", "AETitleSender": "ME", "AETitleTo": "PACS"}}]}
    mutation(rule)
    with pytest.raises(RoutingError) as err:
        parse_rules(json.dumps({"routing": [{"AETitleIn": ".*", "send": [{".*": {
            "IP": "h", "PORT": 1, "AETitleSender": "A", "AETitleTo": "B"}}]}, rule]}), "routing.json")
    text = str(err.value)
    assert text.startswith("routing.json: rule 1 ('mine')") and message in text, text


def test_caller_and_known_ae_table():
    table = parse_rules('''{"routing": [{"AETitleIn": "ProcQA", "send": [{".*": {
        "AETitleSender": "QA", "AETitleTo": "$caller"}}, {"success": {"AETitleSender": "QA", "AETitleTo": "VIEWER"}}]}]}''')
    known = {"SCANNER1": ("10.0.0.7", 104), "VIEWER": ("10.0.0.8", 11112)}
    plan = table.plan(RoutingContext("ProcQA", "SCANNER1", "success"), known_aes=known)[0]
    assert [str(s.destination) for s in plan.sends] == ["SCANNER1@10.0.0.7:104", "VIEWER@10.0.0.8:11112"]
    plan = table.plan(RoutingContext("ProcQA", "STRANGER", "failed"), known_aes=known)[0]
    assert plan.sends == () and "no address known for AE title 'STRANGER'" in plan.unresolved[0]


def test_classify_type_rule():
    table = parse_rules('{"routing": [{"AETitleIn": ".*", "ClassifyType": ["fmri", "dwi.*"], '
                        '"send": [{".*": {"IP": "h", "PORT": 1, "AETitleSender": "A", "AETitleTo": "B"}}]}]}')
    assert table.plan(RoutingContext("P", "S", "success", frozenset({"T1", "fMRI"})))
    assert not table.plan(RoutingContext("P", "S", "success", frozenset({"T1"})))


def test_send_files_arrive_byte_identical_and_non_dicom_is_skipped(tmp_path):
    files = make_study(tmp_path / "out", 5)
    files += [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm")]
    (tmp_path / "out" / "report.txt").write_text("not dicom")
    with StorescpPeer(tmp_path / "pacs") as pacs:
        report = send_files([*files, tmp_path / "out" / "report.txt"], Destination("127.0.0.1", pacs.port, "PACS"))
        assert report.ok, report.summary()
        assert len(report.sent) == 8 and [f.path.name for f in report.files if f.skipped] == ["report.txt"]
        received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in pacs.out.iterdir()}
    for f in files:
        uid = read_part10_header(f).sop_instance_uid
        assert dataset_bytes(received[uid]) == dataset_bytes(f), f"{f.name} changed on the way"


def test_conversion_only_when_the_peer_accepts_nothing_else(tmp_path):
    bigendian = Path(get_testdata_file("MR_small_bigendian.dcm"))
    jpeg2000 = Path(get_testdata_file("JPEG2000.dcm"))
    with StorescpPeer(tmp_path / "pacs", accept_all=False) as pacs:   # uncompressed only
        report = send_files([bigendian, jpeg2000], Destination("127.0.0.1", pacs.port, "PACS"))
    by_name = {f.path.name: f for f in report.files}
    assert by_name["MR_small_bigendian.dcm"].ok and by_name["MR_small_bigendian.dcm"].converted_to == ""
    j2k = by_name["JPEG2000.dcm"]
    if j2k.ok:      # a JPEG 2000 decoder is installed: converted to little endian
        assert j2k.converted_to in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    else:           # none is: the reason names the transfer syntax and the missing decoder
        assert "did not accept transfer syntax 1.2.840.10008.1.2.4.91" in j2k.error


def test_peer_status_association_refusal_and_silence_are_reported(tmp_path):
    files = make_study(tmp_path / "out", 2)
    with StorescpPeer(tmp_path / "pacs") as pacs:
        report = send_files(files, Destination("127.0.0.1", pacs.port, "WRONG_AE"))
    # storescp does not check the called AE: use a closed port and a silent peer instead
    closed = send_files(files, Destination("127.0.0.1", free_port(), "PACS"))
    assert not closed.ok and "cannot connect" in closed.association_error
    assert all("cannot connect" in f.error for f in closed.files)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True)
    t.start()
    try:
        quiet = send_files(files, Destination("127.0.0.1", silent.getsockname()[1], "PACS"), timeout=1.0)
        assert "did not answer within 1 s" in quiet.association_error
    finally:
        for s in accepted:
            s.close()
        silent.close()
    assert report.ok


def test_echo(tmp_path):
    with StorescpPeer(tmp_path / "pacs") as pacs:
        ok, text = echo(Destination("127.0.0.1", pacs.port, "PACS"))
    assert ok and "C-ECHO status 0x0000" in text
    ok, text = echo(Destination("127.0.0.1", free_port(), "PACS"))
    assert not ok and "cannot connect" in text


def _rules_for(primary: int, fallback: int, which: str = "") -> str:
    which_clause = f', "which": [{{"0008,103e": "{which}"}}]' if which else ""
    return ('{"routing": [{"AETitleIn": "ProcA", "send": [{"success": {"IP": "127.0.0.1", "PORT": %d, '
            '"AETitleSender": "NODE", "AETitleTo": "PACS", "break": 1%s}}, {"success": {"IP": "127.0.0.1", '
            '"PORT": %d, "AETitleSender": "NODE", "AETitleTo": "PACS", "break": 1}}]}]}') % (primary, which_clause,
                                                                                           fallback)


def test_fail_over_chain_with_real_peers(tmp_path):
    files = make_study(tmp_path / "out", 4)
    uids = {read_part10_header(f).sop_instance_uid for f in files}
    ctx = RoutingContext("ProcA", "SCANNER", "success")
    with StorescpPeer(tmp_path / "primary") as primary, StorescpPeer(tmp_path / "fallback") as fallback:
        # primary up: it gets everything and 'break' spares the fallback
        plan = parse_rules(_rules_for(primary.port, fallback.port)).plan(ctx)[0]
        outcome = execute_plan(plan, files, send_files)
        assert outcome.delivered and len(outcome.reports) == 1 and outcome.skipped
        assert primary.received_uids() == uids and fallback.received_uids() == set()
        # primary down: the failed send falls through to the fallback
        primary.stop()
        outcome = execute_plan(plan, files, send_files)
        assert outcome.delivered and not outcome.reports[0].ok and outcome.reports[1].ok
        assert fallback.received_uids() == uids
        fallback.stop()
        # everything down: nothing delivered, both destinations pending
        outcome = execute_plan(plan, files, send_files)
        assert not outcome.delivered and len(outcome.pending) == 2


def test_which_sends_only_matching_files(tmp_path):
    t1 = make_study(tmp_path / "out", 3, SeriesDescription="T1 MPRAGE")
    other = make_study(tmp_path / "out2", 2, SeriesDescription="localizer")
    assert select_files(t1 + other, parse_rules(_rules_for(1, 2, "T1.*")).rules[0].targets[0].which) == t1
    with StorescpPeer(tmp_path / "pacs") as pacs, StorescpPeer(tmp_path / "unused") as unused:
        plan = parse_rules(_rules_for(pacs.port, unused.port, "T1.*")).plan(
            RoutingContext("ProcA", "SCANNER", "success"))[0]
        outcome = execute_plan(plan, t1 + other, send_files)
        assert outcome.delivered
        assert pacs.received_uids() == {read_part10_header(f).sop_instance_uid for f in t1}


def test_send_to_orthanc_pacs(tmp_path):
    """Orthanc, a real PACS, receives every file in its own transfer syntax (compressed
    ones included) and refuses a wrong called AE title."""
    from dicom_helpers import OrthancPeer
    files = make_study(tmp_path / "out", 3) + [Path(get_testdata_file("JPEG2000.dcm")),
                                               Path(get_testdata_file("MR_small_RLE.dcm"))]
    with OrthancPeer(tmp_path / "orthanc") as pacs:
        wrong = send_files(files, Destination("127.0.0.1", pacs.dicom_port, "NOT_ORTHANC"))
        assert not wrong.ok and "called AE title not recognized" in wrong.association_error
        report = send_files(files, Destination("127.0.0.1", pacs.dicom_port, "ORTHANC", "HOPSNODE"))
        assert report.ok and len(report.sent) == 5, report.summary()
        assert not any(f.converted_to for f in report.files)
        uids = {read_part10_header(f).sop_instance_uid for f in files}
        assert pacs.received_uids() == uids
        j2k = read_part10_header(files[3]).sop_instance_uid
        stored = tmp_path / "stored.dcm"
        stored.write_bytes(pacs.instance_file(j2k))
    # Orthanc rewrites some header elements; the compressed pixel data must be untouched
    ours, theirs = pydicom.dcmread(files[3]), pydicom.dcmread(stored)
    assert theirs.file_meta.TransferSyntaxUID == ours.file_meta.TransferSyntaxUID
    assert theirs.PixelData == ours.PixelData


def test_route_cli_explains_and_echoes(tmp_path):
    import json
    import subprocess
    import sys
    job = tmp_path / "jobs" / "7"
    (job / "result" / "output").mkdir(parents=True)
    (job / "info.json").write_text(json.dumps({"AETitleCalled": "ProcRSI", "AETitleCaller": "PACS",
                                               "ClassifyTypes": {"1.2.3": ["T1"]}}))
    (job / "result" / "output" / "proc.json").write_text('[{"success": "failed", "message": "today is Monday"}]')
    (tmp_path / "routing.json").write_text(MANUAL_EXAMPLE)

    def magickbox(*args):
        return subprocess.run([sys.executable, "-m", "magickbox.cli", *args], capture_output=True, text=True,
                              timeout=60)

    out = magickbox("route", "test", "7", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "success 'failed'" in out.stdout
    assert "rule 1 ('ProcRSI bucket routing of results'): applies" in out.stdout
    assert "'failed' -> PACS@192.168.0.1:403: sends" in out.stdout
    assert "rule 0 ('Default Rule for OUTPUT to OsiriX'): not applied: disabled" in out.stdout
    out = magickbox("route", "test", str(job), "--rules", str(tmp_path / "routing.json"), "--success", "success")
    assert "'success' -> PACS@192.168.0.1:403: sends (stops the rule's later destinations if it succeeds; " \
           "only files matching 1 'which' filter(s))" in out.stdout
    (tmp_path / "bad.json").write_text('{"routing": [{"AETitleIn": "(", "send": []}]}')
    out = magickbox("route", "test", str(job), "--rules", str(tmp_path / "bad.json"))
    assert out.returncode == 2 and "rule 0: 'AETitleIn' is not a valid regular expression" in out.stderr
    with StorescpPeer(tmp_path / "pacs") as pacs:
        out = magickbox("route", "echo", f"127.0.0.1:{pacs.port}", "PACS")
    assert out.returncode == 0 and out.stdout.startswith("OK ")
    out = magickbox("route", "echo", f"127.0.0.1:{free_port()}", "PACS")
    assert out.returncode == 1 and "cannot connect" in out.stdout


def test_a_broken_output_file_matches_no_filter_instead_of_blocking_the_plan(tmp_path, monkeypatch):
    """Found in review: a file pydicom fails on in another way than InvalidDicomError
    (BytesLengthException is a RuntimeError, NotImplementedError for some encodings) made
    planning raise on every pass."""
    good = make_study(tmp_path / "out", 2, SeriesDescription="T1 MPRAGE")
    broken = tmp_path / "out" / "broken.dcm"
    broken.write_bytes(good[0].read_bytes())
    real_dcmread = pydicom.dcmread

    def dcmread(path, *args, **kwargs):
        if Path(path) == broken:
            raise NotImplementedError("an encoding pydicom cannot read")
        return real_dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    which = parse_rules(_rules_for(1, 2, "T1.*")).rules[0].targets[0].which
    assert select_files(good + [broken], which) == good


def test_output_symlinks_are_never_listed_for_routing(tmp_path):
    """Found in review: routing listed the output with rglob + is_file, which follows
    symbolic links, so a bucket could route any file of the node (another study)."""
    from magickbox.jobfiles import regular_files
    secret = make_study(tmp_path / "archive", 1)[0]
    out = tmp_path / "job" / "output"
    (out / "sub").mkdir(parents=True)
    (out / "report.dcm").write_bytes(secret.read_bytes())
    (out / "link.dcm").symlink_to(secret)
    (out / "sub" / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    assert [p.relative_to(out).as_posix() for p, _ in regular_files(out)] == ["report.dcm"]
    (tmp_path / "outlink").symlink_to(out, target_is_directory=True)
    assert list(regular_files(tmp_path / "outlink")) == []
    import inspect

    from magickbox.results import outflow
    assert "regular_files(root)" in inspect.getsource(outflow.RouteStage.plan_job)


def test_odd_port_values_are_refused_naming_the_key(tmp_path):
    """Found in review: "²".isdigit() is True, so int() raised a bare ValueError."""
    import json

    from magickbox.config import ConfigError, build_node_config
    with pytest.raises(RoutingError, match="'PORT' must be 1-65535"):
        parse_rules(json.dumps({"routing": [{"AETitleIn": ".*", "send": [{".*": {
            "IP": "h", "PORT": "\u00b2", "AETitleSender": "A", "AETitleTo": "B"}}]}]}), "routing.json")
    with pytest.raises(ConfigError, match="routing.known_aes.PACS"):
        build_node_config({"data_dir": str(tmp_path), "routing": {"known_aes": {"PACS": "host:\u00b2"}}})
    with pytest.raises(ConfigError, match="routing.known_aes"):
        build_node_config({"data_dir": str(tmp_path), "routing": {"known_aes": 5}})
