"""KServe v2 destination against a real inference server on localhost (tests/support)."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from pydicom.uid import generate_uid

from connectors.base import Delivery
from connectors.kserve import KServeConfig, KServeDestination, read_findings
from connectors.kserve_protocol import InferResponse
from connectors.kserve_volume import load_volume
from engine.ai_result import AIResult
from engine.errors import PermanentError, RecoverableError
from engine.study_batch import InstanceRef, StudyBatch
from tests.support.batches import batch_json
from tests.support.dicom_files import compress, make_ct_series, write_dataset
from tests.support.kserve_server import KServeServer

MODEL = "hyperdense-ct"
VERSION = "2024.1"
ROWS = COLUMNS = 32
AIR = 24  # stored value: -1000 HU with the synthetic images' intercept of -1024
BLOOD = 1094  # 70 HU: what the test model looks for (50..90 HU)
# Instance number -> (row slice, column slice) of a blob of "blood".
BIG_BLOB = (3, (slice(8, 24), slice(10, 26)))  # 256 px: score 1.0, critical
SMALL_BLOB = (5, (slice(2, 14), slice(4, 16)))  # 144 px: score 0.5625


@dataclass
class Study:
    """A CT study on disk: a 6-slice axial series and a 2-image scout."""

    paths: list[Path]
    sop_by_number: dict[int, str]
    scout_paths: list[Path]


def _image(blobs: list[tuple[slice, slice]]) -> bytes:
    pixels = np.full((ROWS, COLUMNS), AIR, dtype="<u2")
    for rows, columns in blobs:
        pixels[rows, columns] = BLOOD
    return pixels.tobytes()


def write_ct(directory: Path, *, blobs: bool = True) -> Study:
    """The study; the scout also has a blob, so picking the wrong series shows."""
    study_uid = str(generate_uid())
    axial = make_ct_series(study_uid, str(generate_uid()), 6, rows=ROWS, columns=COLUMNS)
    scout = make_ct_series(
        study_uid, str(generate_uid()), 2, series_number=2, rows=ROWS, columns=COLUMNS
    )
    placed = dict([BIG_BLOB, SMALL_BLOB]) if blobs else {}
    for ds in axial:
        ds.PixelData = _image([placed[ds.InstanceNumber]] if ds.InstanceNumber in placed else [])
    for ds in scout:
        ds.PixelData = _image([(slice(0, 20), slice(0, 20))])
    paths = [write_dataset(ds, directory / f"axial_{ds.InstanceNumber}.dcm") for ds in axial]
    scout_paths = [write_dataset(ds, directory / f"scout_{ds.InstanceNumber}.dcm") for ds in scout]
    sops = {int(ds.InstanceNumber): str(ds.SOPInstanceUID) for ds in axial}
    return Study(paths, sops, scout_paths)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return write_ct(tmp_path_factory.mktemp("ct"))


@pytest.fixture
def server() -> Iterator[KServeServer]:
    with KServeServer() as running:
        yield running


class Results:
    """The results channel: collects what the destination forwards."""

    def __init__(self, error: Exception | None = None) -> None:
        self.received: list[AIResult] = []
        self._error = error

    async def __call__(self, raw: bytes) -> bytes | None:
        if self._error is not None:
            raise self._error
        self.received.append(AIResult.model_validate_json(raw))
        return b"stored"


def config(url: str, **fields: Any) -> KServeConfig:
    base = {"type": "kserve", "url": url, "model": "hyperdense", "results_channel": "ai-results"}
    return KServeConfig.model_validate({**base, "timeout_seconds": 10, **fields})


def destination(cfg: KServeConfig, results: Results) -> KServeDestination:
    return KServeDestination(cfg, model_name=MODEL, model_version=VERSION, forward=results)


def run(coro: Coroutine[Any, Any, Delivery]) -> Delivery:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def study_batch(study: Study, *, shuffle: bool = True) -> str:
    """Scout first, axial slices shuffled: neither batch order nor file order is slice order."""
    axial = list(study.paths)
    if shuffle:
        random.Random(7).shuffle(axial)
    return batch_json([*study.scout_paths, *axial])


def send(url: str, study: Study, **fields: Any) -> tuple[Delivery, Results]:
    results = Results()
    delivery = run(destination(config(url, **fields), results).send(study_batch(study)))
    return delivery, results


def assert_blobs_found(result: AIResult, study: Study) -> None:
    by_sop = {f.referenced_sop_instance_uid: f for f in result.findings}
    assert set(by_sop) == {study.sop_by_number[3], study.sop_by_number[5]}
    big, small = by_sop[study.sop_by_number[3]], by_sop[study.sop_by_number[5]]
    assert (big.score, big.critical, big.bounding_box) == (1.0, True, [10.0, 8.0, 26.0, 24.0])
    assert (small.score, small.critical, small.bounding_box) == (0.5625, False, [4, 2, 16, 14])
    assert {f.code for f in result.findings} == {"ai-finding"}


# -- happy paths ---------------------------------------------------------------------------


def test_binary_mode_turns_outputs_into_an_ai_result(study: Study, server: KServeServer) -> None:
    delivery, results = send(server.url, study)
    assert delivery.response == f"2 findings ({MODEL} {VERSION})"
    assert delivery.detail is not None and "6 slices of 32x32" in delivery.detail
    [result] = results.received
    assert (result.model, result.model_version, result.source) == (MODEL, VERSION, "kserve")
    assert result.accession_number == "ACC0001"
    assert result.critical
    assert_blobs_found(result, study)
    [request] = server.requests
    assert request.binary and request.datatype == "FP32" and request.shape == [6, ROWS, COLUMNS]
    assert all(o["parameters"]["binary_data"] for o in request.outputs)
    assert request.path == "/v2/models/hyperdense/infer"


def test_json_mode(study: Study, server: KServeServer) -> None:
    _, results = send(server.url, study, binary_data=False)
    assert_blobs_found(results.received[0], study)
    [request] = server.requests
    assert not request.binary
    assert not any(o["parameters"]["binary_data"] for o in request.outputs)


def test_int16_input(study: Study, server: KServeServer) -> None:
    _, results = send(server.url, study, datatype="INT16")
    assert_blobs_found(results.received[0], study)
    assert server.requests[0].datatype == "INT16"
    assert server.requests[0].tensor.min() == -1000


def test_slices_go_in_patient_order_as_hounsfield_units(study: Study, server: KServeServer) -> None:
    send(server.url, study)
    tensor = server.requests[0].tensor
    # Synthetic slices sit at z = -5 * InstanceNumber: ascending z is instance 6 first.
    blob_slices = [i for i in range(6) if (tensor[i] == 70).any()]
    assert blob_slices == [6 - 5, 6 - 3]
    assert tensor.min() == -1000 and tensor.max() == 70


def test_versioned_model_and_bearer_token(study: Study, server: KServeServer) -> None:
    server.token = "s3cret"
    auth = {"type": "bearer", "token": "s3cret"}
    send(server.url, study, model_version="1", auth=auth)
    assert server.requests[0].path == "/v2/models/hyperdense/versions/1/infer"
    assert server.requests[0].authorization == "Bearer s3cret"


def test_no_findings(tmp_path: Path, server: KServeServer) -> None:
    clean = write_ct(tmp_path, blobs=False)
    for binary in (True, False):  # zero-length tensors both ways
        delivery, results = send(server.url, clean, binary_data=binary)
        assert delivery.response == f"0 findings ({MODEL} {VERSION})"
        assert results.received[0].findings == []


def test_thresholds(study: Study, server: KServeServer) -> None:
    _, results = send(server.url, study, min_score=0.6, critical_threshold=1.0)
    [finding] = results.received[0].findings
    assert finding.referenced_sop_instance_uid == study.sop_by_number[3] and finding.critical
    _, results = send(server.url, study, critical_threshold=0.5, finding_label="Bleed?")
    assert all(f.critical and f.label == "Bleed?" for f in results.received[0].findings)


def test_optional_outputs_can_be_left_out(study: Study, server: KServeServer) -> None:
    _, results = send(server.url, study, outputs={"boxes": None, "slice_index": None})
    assert [o["name"] for o in server.requests[0].outputs] == ["scores"]
    findings = results.received[0].findings
    assert sorted(f.score for f in findings) == [0.5625, 1.0]
    assert all(f.bounding_box is None and f.referenced_sop_instance_uid is None for f in findings)


def test_rle_compressed_slices_are_decoded(tmp_path: Path, study: Study) -> None:
    if shutil.which("dcmcrle") is None:
        pytest.skip("dcmtk is not installed")
    rle = [compress(p, tmp_path / p.name, "rle") for p in study.paths]
    with KServeServer() as server:
        results = Results()
        run(destination(config(server.url), results).send(batch_json(rle)))
    assert_blobs_found(results.received[0], study)


# -- failures ------------------------------------------------------------------------------


def test_server_down_is_recoverable_and_a_retry_succeeds(
    study: Study, server: KServeServer
) -> None:
    server.stop()
    with pytest.raises(RecoverableError, match="ConnectError"):
        send(server.url, study)
    server.start()
    _, results = send(server.url, study)
    assert len(results.received) == 1


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_busy_or_broken_server_is_recoverable(
    study: Study, server: KServeServer, status: int
) -> None:
    server.fail_with = status
    with pytest.raises(RecoverableError, match=f"HTTP {status}: injected failure"):
        send(server.url, study)


@pytest.mark.parametrize("status", [400, 403, 404])
def test_refusals_are_permanent(study: Study, server: KServeServer, status: int) -> None:
    server.fail_with = status
    results = Results()
    with pytest.raises(PermanentError, match=f"HTTP {status}: injected failure"):
        run(destination(config(server.url), results).send(study_batch(study)))
    assert results.received == []


def test_unknown_model_names_the_servers_reason(study: Study, server: KServeServer) -> None:
    with pytest.raises(PermanentError, match="HTTP 400: Request for unknown model: 'nope'"):
        send(server.url, study, model="nope")


def test_missing_bearer_token_is_permanent(study: Study, server: KServeServer) -> None:
    server.token = "s3cret"
    with pytest.raises(PermanentError, match="HTTP 401"):
        send(server.url, study)


def test_slow_model_times_out_recoverably(study: Study, server: KServeServer) -> None:
    server.delay_seconds = 5
    with pytest.raises(RecoverableError, match=r"timed out after 0\.3 s"):
        send(server.url, study, timeout_seconds=0.3)


@pytest.mark.parametrize("binary", [True, False])
def test_wrong_output_shape_is_permanent(study: Study, server: KServeServer, binary: bool) -> None:
    server.boxes_transposed = True
    with pytest.raises(PermanentError, match=r"output 'boxes' has shape \[4, 2\], expected \[2, 4"):
        send(server.url, study, binary_data=binary)


def test_missing_output_is_permanent(study: Study, server: KServeServer) -> None:
    server.drop_outputs = {"slice_index"}
    with pytest.raises(PermanentError, match="output 'slice_index' is missing"):
        send(server.url, study)


def test_output_the_model_lacks_is_refused_by_the_server(
    study: Study, server: KServeServer
) -> None:
    with pytest.raises(PermanentError, match="unexpected inference output 'probabilities'"):
        send(server.url, study, outputs={"scores": "probabilities"})


def test_results_channel_outage_propagates(study: Study, server: KServeServer) -> None:
    results = Results(RecoverableError("channel ai-results is not deployed"))
    with pytest.raises(RecoverableError, match="not deployed"):
        run(destination(config(server.url), results).send(study_batch(study)))


def test_undecodable_compressed_slices_are_permanent(
    tmp_path: Path, study: Study, server: KServeServer
) -> None:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip("dcmtk is not installed")
    jpeg = [compress(p, tmp_path / p.name, "jpeg-lossless") for p in study.paths]
    try:
        send_paths = batch_json(jpeg)
        run(destination(config(server.url), Results()).send(send_paths))
    except PermanentError as exc:
        assert "compressed (JPEG Lossless" in str(exc)
    else:
        pytest.skip("a JPEG decoder (pylibjpeg/gdcm) is installed")
    assert server.requests == []


def test_not_a_study_batch(server: KServeServer) -> None:
    with pytest.raises(PermanentError, match="not a study batch"):
        run(destination(config(server.url), Results()).send('{"hello": 1}'))


# -- pieces ----------------------------------------------------------------------------------


def _refs(paths: list[Path]) -> list[InstanceRef]:
    return StudyBatch.model_validate_json(batch_json(paths)).instances


def test_load_volume_sorts_by_position_then_instance_number(tmp_path: Path) -> None:
    datasets = make_ct_series("1.2.3", "1.2.3.1", 4, rows=4, columns=4)
    for ds in datasets:
        ds.ImagePositionPatient = [0, 0, 10 - ds.InstanceNumber]  # descending z
    paths = [write_dataset(ds, tmp_path / f"{ds.InstanceNumber}.dcm") for ds in datasets]
    volume = load_volume(_refs(paths[::-1]), np.dtype("<f4"))
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in datasets}
    assert [numbers[uid] for uid in volume.sop_instance_uids] == [4, 3, 2, 1]
    for ds in datasets:  # without positions for all, instance numbers decide
        del ds.ImagePositionPatient
        write_dataset(ds, tmp_path / f"{ds.InstanceNumber}.dcm")
    volume = load_volume(_refs(paths[::-1]), np.dtype("<f4"))
    assert [numbers[uid] for uid in volume.sop_instance_uids] == [1, 2, 3, 4]


def test_load_volume_refuses_mixed_sizes(tmp_path: Path) -> None:
    small = make_ct_series("1.2.3", "1.2.3.1", 1, rows=4, columns=4)[0]
    large = make_ct_series("1.2.3", "1.2.3.1", 1, rows=8, columns=8)[0]
    paths = [write_dataset(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate([small, large])]
    with pytest.raises(PermanentError, match="not one volume"):
        load_volume(_refs(paths), np.dtype("<f4"))


def test_load_volume_refuses_non_images(tmp_path: Path) -> None:
    ds = make_ct_series("1.2.3", "1.2.3.1", 1, rows=4, columns=4)[0]
    del ds.Rows, ds.Columns, ds.PixelData
    path = write_dataset(ds, tmp_path / "x.dcm")
    with pytest.raises(PermanentError, match="is not an image"):
        load_volume(_refs([path]), np.dtype("<f4"))


def _answer(**outputs: list[Any]) -> InferResponse:
    return InferResponse("m", "1", {k: np.array(v) for k, v in outputs.items()})


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"scores": [1.5], "boxes": [[0, 0, 1, 1]], "slice_index": [0]}, "outside \\[0, 1\\]"),
        ({"scores": [0.5], "boxes": [[0, 0, 1, 1]], "slice_index": [2]}, "outside 0..1"),
        ({"scores": [0.5], "boxes": [[0, 0, 1, 1]], "slice_index": [0.5]}, "non-integer"),
        ({"scores": [[0.5]], "boxes": [[0, 0, 1, 1]], "slice_index": [0]}, "expected rank 1"),
        ({"scores": [0.5], "boxes": [[0, 0, 1]], "slice_index": [0]}, "expected \\[1, 4\\]"),
    ],
)
def test_read_findings_checks_the_contract(outputs: dict[str, Any], message: str) -> None:
    cfg = config("http://localhost")
    with pytest.raises(PermanentError, match=message):
        read_findings(_answer(**outputs), cfg, ["1.2.3.4", "1.2.3.5"])


def test_config() -> None:
    cfg = config("http://triton:8000/", model="ct bleed", model_version="3")
    assert cfg.infer_url() == "http://triton:8000/v2/models/ct%20bleed/versions/3/infer"
    with pytest.raises(ValidationError):
        config("ftp://triton")
    with pytest.raises(ValidationError):
        config("http://triton", outputs={"score": "x"})
    with pytest.raises(ValidationError):
        config("http://triton", datatype="UINT8")


def test_support_server_health_and_metadata(server: KServeServer) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    metadata = httpx.get(f"{server.url}/v2/models/hyperdense").json()
    assert [o["name"] for o in metadata["outputs"]] == ["scores", "boxes", "slice_index"]
    assert httpx.get(f"{server.url}/v2/models/other").status_code == 404


def test_study_batch_metadata_accession_wins(study: Study, server: KServeServer) -> None:
    batch = StudyBatch.model_validate_json(study_batch(study))
    batch.metadata["AccessionNumber"] = "NORMALIZED1"
    results = Results()
    run(destination(config(server.url), results).send(batch.model_dump_json()))
    assert results.received[0].accession_number == "NORMALIZED1"
    assert results.received[0].study_instance_uid == batch.study_instance_uid
