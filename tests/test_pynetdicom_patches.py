"""The pynetdicom fast path produces exactly what pynetdicom's generic code does."""
from __future__ import annotations

from io import BytesIO

from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from magickbox import pynetdicom_patches


def _generic_rsp_command(rsp: C_STORE) -> bytes:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return encode(msg.command_set, True, True)


def test_c_store_rsp_bytes_match_pynetdicom():
    for status, sop in ((0x0000, "1.2.3.4.5"), (0xC220, "1.2.840.10008.5.1.4.1.1.4.123456"), (0xA700, "1.2")):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        rsp.AffectedSOPInstanceUID = sop
        rsp.Status = status
        assert pynetdicom_patches.encode_c_store_rsp(rsp) == _generic_rsp_command(rsp)


def test_c_store_rq_primitive_matches_pynetdicom():
    assert pynetdicom_patches.apply()
    req = C_STORE()
    req.MessageID = 12
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    req.AffectedSOPInstanceUID = "1.2.3.4.5.6"
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = "MOVER"
    req.MoveOriginatorMessageID = 3
    req.DataSet = BytesIO(b"\x08\x00\x18\x00")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    msg.encoded_command_set = BytesIO(encode(msg.command_set, True, True))
    msg.context_id = 1
    fast = pynetdicom_patches._c_store_rq_to_primitive(msg)
    generic = pynetdicom_patches._original_c_store_to_primitive(msg)
    for attr in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(fast, attr) == getattr(generic, attr), attr
    assert fast.DataSet is generic.DataSet
