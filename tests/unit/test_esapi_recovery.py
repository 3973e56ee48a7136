"""How the TPM adapter recovers from a failed command, without a TPM: the ESAPI context is a
stand-in, the failures are real ``TSS2_Exception`` response codes."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tpm2_pytss")

from tpm2_pytss import TSS2_Exception  # noqa: E402

from attest.errors import OperationNotAllowed, TpmError  # noqa: E402
from attest.node.tpm.esapi import EsapiTpm, _recovery  # noqa: E402

TCTI_IO = 0x000A000A  # TSS2_TCTI_RC_IO_ERROR: the connection broke
BAD_SEQUENCE = 0x00070007  # TSS2_ESYS_RC_BAD_SEQUENCE: the context waits for a lost answer


class _Context:
    def close(self) -> None:
        pass


class _Adapter(EsapiTpm):
    """An ``EsapiTpm`` whose connections are counted stand-ins."""

    def __init__(self) -> None:
        self.connects = 0
        super().__init__("swtpm:host=127.0.0.1,port=1")  # connects once

    def _connect(self) -> None:
        self.connects += 1
        self._esapi = _Context()


def failing(*rcs: int, result: Any = "quote") -> Any:
    """A command that fails with ``rcs`` in turn, then returns ``result``."""
    left = list(rcs)

    def fn() -> Any:
        if left:
            raise TSS2_Exception(left.pop(0))
        return result

    return fn


@pytest.mark.parametrize(
    ("rc", "how"),
    [
        (TCTI_IO, "connection"),
        (BAD_SEQUENCE, "connection"),
        (0x100, "startup"),  # TPM_RC_INITIALIZE
        (0x902, "reload"),  # TPM_RC_OBJECT_MEMORY
        (0x910, "reload"),  # TPM_RC_REFERENCE_H0
        (0x08B, None),  # TPM_RC_HANDLE: never a key we lost
        (0x00070004, None),  # another ESAPI error
    ],
)
def test_each_response_code_names_its_recovery(rc: int, how: str | None) -> None:
    assert _recovery(rc) == how


def test_a_context_left_waiting_by_a_killed_tpm_is_replaced() -> None:
    """The TPM was killed mid-command: the context still waits for that answer and refuses
    every command (bad sequence). A new context recovers; the command then succeeds."""
    tpm = _Adapter()
    assert tpm._call("quote", failing(BAD_SEQUENCE)) == "quote"
    assert tpm.connects == 2 and tpm.recoveries() == 1


def test_a_connection_still_broken_is_dropped_so_the_next_call_starts_afresh() -> None:
    """Reconnecting once did not help (the TPM is still down): the command fails, and the
    broken context is not kept -- the next call connects again instead of failing on it."""
    tpm = _Adapter()
    with pytest.raises(TpmError) as err:
        tpm._call("quote", failing(TCTI_IO, TCTI_IO))
    assert err.value.rc == TCTI_IO
    assert tpm._esapi is None and tpm.connects == 2
    assert tpm._call("quote", failing()) == "quote"  # the TPM is back
    assert tpm.connects == 3


def test_an_answer_of_the_command_itself_keeps_the_connection_and_the_keys() -> None:
    """A PCR read of a bank the TPM does not have is the adapter's own TpmError ("the TPM
    returned no value"): the answer, not a broken connection. It dropped the connection and
    the keys, so a client asking for a missing bank made the broker re-create its AK (an RSA
    primary takes seconds on a hardware TPM) at every request."""
    tpm = _Adapter()
    context, tpm._ak = tpm._esapi, "ak-handle"

    def missing_bank() -> None:
        raise TpmError("the TPM returned no value for sha512:0")

    for _ in range(3):
        with pytest.raises(TpmError, match="no value for sha512:0"):
            tpm._call("reading PCRs", missing_bank)
    assert tpm._esapi is context and tpm._ak == "ak-handle"
    assert tpm.connects == 1 and tpm.recoveries() == 0


class _FlakyConnect(_Adapter):
    """Connections fail ``fail`` times first (the TPM device is away)."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        super().__init__()

    def _connect(self) -> None:
        self.connects += 1
        if self.fail:
            self.fail -= 1
            raise TpmError("cannot open TPM at swtpm:…: connection refused")
        self._esapi = _Context()


@pytest.mark.parametrize(("fail", "works"), [(1, True), (2, False)])
def test_a_failed_connection_is_tried_once_more_then_named(fail: int, works: bool) -> None:
    tpm = _FlakyConnect(0)
    tpm._drop()
    tpm.fail = fail
    if works:
        assert tpm._call("quote", failing()) == "quote"
    else:
        with pytest.raises(TpmError, match="cannot open TPM"):
            tpm._call("quote", failing())
    assert tpm.connects == 1 + 2


class _NvContext(_Context):
    """An ordinary NV index (not a counter) holding someone else's data."""

    def tr_from_tpmpublic(self, index: int) -> int:
        return index

    def nv_read_public(self, tr: int) -> tuple[Any, None]:
        from tpm2_pytss.constants import TPM2_NT, TPMA_NV
        from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

        attrs = TPMA_NV.OWNERREAD | (TPM2_NT.ORDINARY << TPMA_NV.TPM2_NT_SHIFT)
        return TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=tr, attributes=attrs)), None

    def nv_read(self, tr: int, size: int, offset: int, **_: Any) -> bytes:
        return b"S3CRETKEY-123456"[offset : offset + size]


def test_an_ordinary_nv_index_is_not_read_as_a_counter() -> None:
    """The API may ask for any index in the NV range: the adapter reads a counter only, with
    no reconnect (a refusal is not a broken TPM)."""
    tpm = _Adapter()
    tpm._esapi = _NvContext()
    with pytest.raises(OperationNotAllowed, match="0x01800123 is not a counter"):
        tpm.nv_counter_read(0x01800123)
    assert tpm.connects == 1 and tpm.recoveries() == 0


@pytest.mark.parametrize(("id_object", "secret", "rc"), [(133, 0, 0x1D5), (0, 513, 0x2D5)])
def test_a_credential_blob_over_its_tpm2b_buffer_is_a_size_error(
    id_object: int, secret: int, rc: int
) -> None:
    """tpm2-pytss cannot build the structure (IndexError, an internal error in the broker):
    refused as the TPM would, before any command, without a reconnect."""
    tpm = _Adapter()
    with pytest.raises(TpmError, match="over the") as info:
        tpm.activate_credential(b"\x00" * id_object, b"\x00" * secret)
    assert info.value.rc == rc and tpm.connects == 1
