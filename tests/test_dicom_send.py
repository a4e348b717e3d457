"""C-STORE destination against real peers: dcmtk storescp, Orthanc and a pynetdicom SCP."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, RLELossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from connectors.base import Delivery
from connectors.dicom_send import (
    MAX_CONTEXTS,
    DicomSendConfig,
    DicomSendDestination,
    PrepareInstance,
    plan_associations,
)
from engine.errors import PermanentError, RecoverableError
from engine.study_batch import InstanceRef
from tests.support.batches import batch_json, batch_json_unchecked
from tests.support.dicom_files import (
    CT_IMAGE_STORAGE,
    compress,
    make_ct_instance,
    write_dataset,
    write_study,
)
from tests.support.orthanc import OrthancProcess, orthanc_available, running_orthanc
from tests.support.storescp import StoreSCP

PRIVATE_SOP_CLASS = UID("1.2.826.0.1.3680043.8.498.1.999")
HAS_NUMPY = importlib.util.find_spec("numpy") is not None


def run(coro: Coroutine[Any, Any, Delivery]) -> Delivery:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def destination(
    port: int, aet: str, prepare: PrepareInstance | None = None, timeout: float = 10
) -> DicomSendDestination:
    config = DicomSendConfig(
        type="dicom", host="127.0.0.1", port=port, ae_title=aet, timeout_seconds=timeout
    )
    return DicomSendDestination(config, prepare_instance=prepare)


def private_class_instance(directory: Path, study_uid: str) -> Path:
    """A CT image relabelled with a SOP class no peer knows."""
    ds = make_ct_instance(study_uid, generate_uid())
    ds.SOPClassUID = PRIVATE_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = PRIVATE_SOP_CLASS
    return write_dataset(ds, directory / "private.dcm")


@pytest.fixture(scope="module")
def scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("scp") / "in", aet="AI_NODE") as server:
        yield server


@pytest.fixture
def ai_node(scp: StoreSCP) -> StoreSCP:
    scp.clear()
    return scp


# -- planning -----------------------------------------------------------------------------


def ref(sop_class: str, syntax: str) -> InstanceRef:
    uid = generate_uid()
    return InstanceRef(
        sop_instance_uid=uid,
        sop_class_uid=sop_class,
        series_instance_uid=uid,
        transfer_syntax_uid=syntax,
        path="/nonexistent",
    )


def test_plan_offers_stored_syntax_then_uncompressed_fallback() -> None:
    plans = plan_associations(
        [ref(CT_IMAGE_STORAGE, RLELossless), ref(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")]
    )
    assert len(plans) == 1
    offered = [(cx.abstract_syntax, cx.transfer_syntax) for cx in plans[0].contexts]
    assert offered == [
        (CT_IMAGE_STORAGE, [RLELossless]),
        (CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
    ]


def test_plan_splits_associations_beyond_128_contexts() -> None:
    refs = [ref(f"1.2.3.{n}", "1.2.840.10008.1.2.1") for n in range(200)]
    plans = plan_associations(refs)
    assert [len(p.contexts) for p in plans] == [MAX_CONTEXTS, 200 - MAX_CONTEXTS]
    assert [r for p in plans for r in p.instances] == refs


# -- storescp -----------------------------------------------------------------------------


def test_study_arrives_with_same_sop_uids(tmp_path: Path, ai_node: StoreSCP) -> None:
    study = write_study(tmp_path / "study", series=2, per_series=3)
    delivery = run(destination(ai_node.port, ai_node.aet).send(batch_json(study.paths)))
    assert delivery.response == "stored 6 instances"
    assert ai_node.received_sop_uids() == set(study.sop_uids)


def test_peer_down_is_recoverable_then_send_succeeds(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    node = StoreSCP(tmp_path / "down", aet="AI_NODE")
    dest = destination(node.port, node.aet, timeout=2)
    with pytest.raises(RecoverableError, match="unreachable"):
        run(dest.send(batch_json(study.paths)))
    with node:
        assert run(dest.send(batch_json(study.paths))).response == "stored 2 instances"
        assert node.received_sop_uids() == set(study.sop_uids)


def test_rejected_association_is_recoverable(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    with (
        StoreSCP(tmp_path / "refusing", extra_args=["--refuse"]) as node,
        pytest.raises(RecoverableError, match="rejected the association"),
    ):
        run(destination(node.port, node.aet).send(batch_json(study.paths)))


def test_connection_lost_mid_batch_is_recoverable(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=3)
    with (
        StoreSCP(tmp_path / "aborting", extra_args=["--abort-after"]) as node,
        pytest.raises(RecoverableError, match="lost during C-STORE"),
    ):
        run(destination(node.port, node.aet).send(batch_json(study.paths)))


def test_close_interrupts_a_batch_in_flight(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=5)
    with StoreSCP(tmp_path / "slow", extra_args=["--sleep-after", "1"]) as node:
        dest = destination(node.port, node.aet)

        async def send_then_close() -> Delivery:
            sending = asyncio.create_task(dest.send(batch_json(study.paths)))
            await asyncio.sleep(0.3)
            await dest.close()
            return await sending

        with pytest.raises(RecoverableError, match="interrupted"):
            run(send_then_close())
        assert 1 <= len(node.received()) < 5


def test_refused_sop_class_is_permanent_and_the_rest_is_sent(
    tmp_path: Path, ai_node: StoreSCP
) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    odd = private_class_instance(tmp_path / "study", study.study_uid)
    odd_uid = str(dcmread(odd).SOPInstanceUID)
    with pytest.raises(PermanentError) as caught:
        run(destination(ai_node.port, ai_node.aet).send(batch_json([*study.paths, odd])))
    assert odd_uid in str(caught.value)
    assert "refused 1 of 3" in str(caught.value)
    assert "Synthetic" not in str(caught.value)  # no PHI
    assert ai_node.received_sop_uids() == set(study.sop_uids)


def test_no_acceptable_context_at_all_is_permanent(tmp_path: Path, ai_node: StoreSCP) -> None:
    odd = private_class_instance(tmp_path, generate_uid())
    with pytest.raises(PermanentError, match="accepted none of the proposed SOP classes"):
        run(destination(ai_node.port, ai_node.aet).send(batch_json([odd])))


def test_missing_file_is_permanent(tmp_path: Path, ai_node: StoreSCP) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    study.paths[1].unlink()
    with pytest.raises(PermanentError, match=study.sop_uids[1]):
        run(
            destination(ai_node.port, ai_node.aet).send(
                batch_json_unchecked(study.sop_uids, study.paths)
            )
        )
    assert ai_node.received_sop_uids() == {study.sop_uids[0]}


def test_not_a_batch_is_permanent(ai_node: StoreSCP) -> None:
    with pytest.raises(PermanentError, match="not a study batch"):
        run(destination(ai_node.port, ai_node.aet).send('{"instances": []}'))


def test_compressed_instance_is_sent_as_stored(tmp_path: Path, ai_node: StoreSCP) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    rle = compress(study.paths[0], tmp_path / "rle" / "1.dcm", "rle")
    assert run(destination(ai_node.port, ai_node.aet).send(batch_json([rle]))).response == (
        "stored 1 instances"
    )
    (received,) = ai_node.received()
    assert dcmread(received).file_meta.TransferSyntaxUID == RLELossless


def test_compressed_instance_to_uncompressed_only_peer(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=1)
    rle = compress(study.paths[0], tmp_path / "rle" / "1.dcm", "rle")
    with StoreSCP(tmp_path / "plain", accept_all=False) as node:
        dest = destination(node.port, node.aet)
        if HAS_NUMPY:  # pydicom can decode RLE: the peer gets it uncompressed
            assert run(dest.send(batch_json([rle]))).response == "stored 1 instances"
            (received,) = node.received()
            assert not dcmread(received).file_meta.TransferSyntaxUID.is_compressed
        else:
            with pytest.raises(PermanentError, match="cannot be decompressed here"):
                run(dest.send(batch_json([rle])))


# -- statuses from a pynetdicom SCP ---------------------------------------------------------


class StatusSCP:
    """A storage SCP answering every C-STORE with ``status`` (a real association)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.received: list[str] = []
        ae = AE(ae_title="STATUS_SCP")
        ae.add_supported_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        if server is None:
            raise RuntimeError("the status SCP did not start")
        self._server: ThreadedAssociationServer = server
        self.port: int = server.server_address[1]

    def _on_store(self, event: Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return self.status

    def close(self) -> None:
        self._server.shutdown()


@pytest.mark.parametrize(
    ("status", "error"),
    [(0xA700, RecoverableError), (0xC000, PermanentError), (0xA900, PermanentError)],
)
def test_failure_statuses(tmp_path: Path, status: int, error: type[Exception]) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    scp = StatusSCP(status)
    try:
        with pytest.raises(error, match=f"0x{status:04X}"):
            run(destination(scp.port, "STATUS_SCP").send(batch_json(study.paths)))
    finally:
        scp.close()
    if error is RecoverableError:  # out of resources: stop at the first instance
        assert scp.received == study.sop_uids[:1]
    else:  # refused: name the instances, but still try the rest
        assert scp.received == study.sop_uids


def test_warning_status_counts_as_stored(tmp_path: Path) -> None:
    study = write_study(tmp_path / "study", series=1, per_series=2)
    scp = StatusSCP(0xB000)
    try:
        delivery = run(destination(scp.port, "STATUS_SCP").send(batch_json(study.paths)))
    finally:
        scp.close()
    assert delivery.response == "stored 2 instances"
    assert delivery.detail is not None and "2 with warning status" in delivery.detail


# -- Orthanc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_orthanc_receives_prepared_instances(tmp_path: Path, orthanc: OrthancProcess) -> None:
    orthanc.clear()
    study = write_study(tmp_path / "study", series=2, per_series=2)

    def prepare(ds: Dataset) -> Dataset:
        ds.StudyDescription = "PREPARED BY MERIDIAN"
        return ds

    dest = destination(orthanc.dicom_port, orthanc.aet, prepare=prepare)
    assert run(dest.send(batch_json(study.paths))).response == "stored 4 instances"
    tags = orthanc.tags_by_sop_uid()
    assert set(tags) == set(study.sop_uids)
    assert {t["StudyDescription"] for t in tags.values()} == {"PREPARED BY MERIDIAN"}


def test_resending_a_batch_orthanc_already_has_succeeds(
    tmp_path: Path, orthanc: OrthancProcess
) -> None:
    orthanc.clear()
    study = write_study(tmp_path / "study", series=1, per_series=2)
    dest = destination(orthanc.dicom_port, orthanc.aet)
    payload = batch_json(study.paths)
    run(dest.send(payload))
    assert run(dest.send(payload)).response == "stored 2 instances"
    assert orthanc.sop_instance_uids() == set(study.sop_uids)
