"""The reference AI node: algorithm, SR/GSPS/JSON it writes, the node between real peers.

Synthetic CT heads: 64x64 slices of 0.7 mm pixels, 5 mm apart; air -1000 HU,
a skull ring of 1000 HU (radius 25-28 px), brain 30 HU inside, and 70 HU
blocks where a test wants blood. The end-to-end tests send with dcmtk's
storescu, receive the SR/GSPS with dcmtk's storescp (the hub's results AE)
and the JSON with a stdlib HTTP server.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from ainode import MODEL_NAME, __version__
from ainode import codes as c
from ainode.algorithm import Params, analyse, detect, find_regions, score
from ainode.cli import add_arguments
from ainode.results import build_results
from ainode.server import AINode, AINodeConfig
from ainode.volume import ENHANCED_CT_IMAGE_STORAGE
from engine.ai_result import AIResult
from tests.support.ct_head import (
    BLOB,
    BLOB_BOX,
    BLOB_VOXELS,
    SIZE,
    VOXEL_MM3,
    Box,
    head_hu,
    head_series,
)
from tests.support.dicom_files import make_ct_instance, write_dataset
from tests.support.storescp import StoreSCP


def _item(**values: Any) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def enhanced_head(blob_frames: dict[int, Box], frames: int = 6) -> Dataset:
    """One Enhanced CT instance: geometry and rescale in functional groups, frames bottom-up."""
    ds = make_ct_instance(str(generate_uid()), str(generate_uid()), rows=SIZE, columns=SIZE,
                          body_part="HEAD")  # fmt: skip
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                    "SliceThickness", "RescaleSlope", "RescaleIntercept"):  # fmt: skip
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.NumberOfFrames = frames
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[_item(PixelSpacing=[0.7, 0.7], SliceThickness=5)],
            PlaneOrientationSequence=[_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])],
            PixelValueTransformationSequence=[
                _item(RescaleSlope=1, RescaleIntercept=-1024, RescaleType="HU")
            ],
        )
    ]
    # Frame 1 is the top slice: sorting along the normal must reverse the frames.
    ds.PerFrameFunctionalGroupsSequence = [
        _item(PlanePositionSequence=[_item(ImagePositionPatient=[0, 0, -5 * n])])
        for n in range(1, frames + 1)
    ]
    pixels = [head_hu(blob_frames.get(n)) + 1024 for n in range(1, frames + 1)]
    ds.PixelData = np.stack(pixels).astype("<u2").tobytes()
    return ds


def _uid_of(datasets: Sequence[Dataset], number: int) -> str:
    return next(str(ds.SOPInstanceUID) for ds in datasets if int(ds.InstanceNumber) == number)


# -- the algorithm -----------------------------------------------------------------


def test_a_blob_is_one_finding_on_its_largest_slice() -> None:
    datasets = head_series(BLOB)

    [finding] = detect(datasets)

    assert finding.sop_instance_uid == _uid_of(datasets, 5)
    assert finding.bounding_box == BLOB_BOX
    assert finding.frame_number is None
    assert finding.slice_count == 3
    assert finding.volume_mm3 == pytest.approx(BLOB_VOXELS * VOXEL_MM3, abs=0.1)
    assert finding.mean_hu == 70.0
    assert finding.score == pytest.approx(score(finding.volume_mm3), abs=1e-4)
    assert finding.critical is (finding.volume_mm3 >= Params().critical_volume_mm3)


def test_a_normal_head_has_no_finding() -> None:
    analysis = analyse(head_series())

    assert analysis.applicable
    assert analysis.volumes_analysed == 1
    assert analysis.findings == []


def test_blood_like_pixels_along_the_skull_are_not_findings() -> None:
    # A 2-pixel rim of 70 HU inside the skull on every slice: 3D-connected, far above the
    # minimum volume, yet within the 2 mm (3 px) bone margin.
    datasets = head_series(rim_hu=70.0)

    assert detect(datasets) == []
    assert detect(datasets, Params(bone_margin_mm=0.5))  # a 1 px margin leaves pieces of it


def test_a_speck_below_the_minimum_volume_is_ignored() -> None:
    assert detect(head_series({5: (30, 30, 34, 34)})) == []  # 12 voxels after the median: 29 mm3


def test_the_same_study_gives_the_same_findings_whatever_the_order() -> None:
    datasets = head_series(BLOB) + head_series({3: (36, 20, 50, 40), 4: (36, 20, 50, 40)})
    shuffled = list(datasets)
    random.Random(7).shuffle(shuffled)

    first, again, other_order = detect(datasets), detect(datasets), detect(shuffled)

    assert len(first) == 2
    assert first == again == other_order
    assert first[0].score >= first[1].score


def test_volume_drives_score_and_critical() -> None:
    hu = np.full((4, 40, 40), 30.0)
    hu[1:3, 10:30, 10:30] = 70.0  # 2 x 20 x 20 voxels of 1 mm3, less 4 corners per slice

    [region] = find_regions(hu, (1.0, 1.0, 1.0))

    assert region.slice_index == 1  # equal areas: the first slice along the normal
    assert region.bounding_box == (10, 10, 30, 30)
    assert region.volume_mm3 == 792.0
    assert not region.critical
    [bigger] = find_regions(hu, (2.0, 1.0, 1.0))
    assert bigger.volume_mm3 == 1584.0 and bigger.critical
    assert bigger.score > region.score
    assert score(Params().score_half_volume_mm3) == 0.5


@pytest.mark.parametrize(
    ("body_part", "reason"), [("CHEST", "not a head study"), ("", "not a head study")]
)
def test_a_study_that_is_not_a_head_is_not_analysed(body_part: str, reason: str) -> None:
    datasets = head_series(BLOB, body_part=body_part)
    for ds in datasets:
        ds.StudyDescription = "CT ABDOMEN"

    analysis = analyse(datasets)

    assert (analysis.applicable, analysis.reason, analysis.findings) == (False, reason, [])


def test_a_study_without_ct_is_not_analysed() -> None:
    datasets = head_series(BLOB)
    for ds in datasets:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
        ds.Modality = "MR"

    analysis = analyse(datasets)

    assert (analysis.applicable, analysis.reason) == (False, "no CT image in the study")


def test_a_head_found_by_description_when_body_part_is_empty() -> None:
    datasets = head_series(BLOB, body_part="")
    for ds in datasets:
        ds.StudyDescription = "CT BRAIN W/O"

    assert len(detect(datasets)) == 1


def test_enhanced_ct_frames_are_sorted_and_referenced_by_frame_number() -> None:
    ds = enhanced_head({2: (20, 20, 30, 30), 3: (18, 18, 32, 34)})

    [finding] = detect([ds])

    assert (finding.sop_instance_uid, finding.frame_number) == (str(ds.SOPInstanceUID), 3)
    assert finding.bounding_box == BLOB_BOX
    assert finding.slice_count == 2


# -- SR, GSPS, JSON ----------------------------------------------------------------


def _reread(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _texts(item: Dataset, code_value: str) -> list[str]:
    """TEXT values of every content item named ``code_value`` under ``item``."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ConceptNameCodeSequence[0].CodeValue == code_value and "TextValue" in child:
            found.append(str(child.TextValue))
        found += _texts(child, code_value)
    return found


def _report(ds: Dataset) -> hd.sr.MeasurementReport:
    content = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _code(value: Any) -> tuple[str, str]:
    return (str(value.value), str(value.scheme_designator))


def test_the_sr_carries_findings_algorithm_and_references() -> None:
    sources = head_series(BLOB)
    key_uid = _uid_of(sources, 5)
    results = build_results(analyse(sources), sources)

    ds = _reread(results.sr)

    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert (ds.PatientID, ds.PatientName) == (sources[0].PatientID, sources[0].PatientName)
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions) == (
        "Meridian", MODEL_NAME, __version__,
    )  # fmt: skip
    assert _texts(ds, "111001")[0] == MODEL_NAME  # Algorithm Name (TID 4019)
    assert set(_texts(ds, "111003")) == {__version__}  # Algorithm Version
    [group] = _report(ds).get_planar_roi_measurement_groups()
    assert _code(group.finding_type) == ("HYPERDENSE", "99MERIDIAN")
    roi = group.roi
    assert isinstance(roi, hd.sr.ImageRegion)
    assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    x0, y0, x1, y1 = BLOB_BOX
    assert roi.value.tolist() == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key_uid
    measured = {_code(m.name): (m.value, _code(m.unit)) for m in group.get_measurements()}
    finding = results.ai_result.findings[0]
    assert measured[("118565006", "SCT")] == (finding.measurements["volume_mm3"], ("mm3", "UCUM"))
    assert measured[("112031", "DCM")] == (70.0, ("[hnsf'U]", "UCUM"))
    assert measured[("SCORE", "99MERIDIAN")] == (finding.score, ("1", "UCUM"))
    [critical] = group.get_qualitative_evaluations()
    assert _code(critical.name) == ("CRITICAL", "99MERIDIAN")
    assert _code(critical.value) == (("373066001" if finding.critical else "373067005"), "SCT")


def test_the_gsps_outlines_each_finding_on_its_image() -> None:
    sources = head_series(BLOB)
    results = build_results(analyse(sources), sources)

    [gsps] = [_reread(ds) for ds in results.gsps]

    assert gsps.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert gsps.StudyInstanceUID == sources[0].StudyInstanceUID
    assert gsps.PatientID == sources[0].PatientID
    assert gsps.ManufacturerModelName == MODEL_NAME
    [annotation] = gsps.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == _uid_of(sources, 5)
    [outline] = annotation.GraphicObjectSequence
    x0, y0, x1, y1 = BLOB_BOX
    assert outline.GraphicType == "POLYLINE" and outline.GraphicAnnotationUnits == "PIXEL"
    assert list(outline.GraphicData) == [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]
    assert annotation.TextObjectSequence[0].UnformattedTextValue.startswith("Hyperdense region 1")


def test_the_json_result_matches_the_dicom_results() -> None:
    sources = head_series(BLOB)
    results = build_results(analyse(sources), sources)

    result = AIResult.model_validate_json(results.ai_result.model_dump_json())

    assert (result.model, result.model_version, result.source) == (MODEL_NAME, __version__, "json")
    assert result.study_instance_uid == sources[0].StudyInstanceUID
    assert result.accession_number == "ACC0001"
    assert result.result_sop_instance_uids == [str(ds.SOPInstanceUID) for ds in results.dicom]
    [finding] = result.findings
    assert (finding.code, finding.label) == (c.FINDING_CODE, c.FINDING_LABEL)
    assert finding.referenced_sop_instance_uid == _uid_of(sources, 5)
    assert finding.bounding_box == [float(v) for v in BLOB_BOX]
    assert set(finding.measurements) == {"volume_mm3", "mean_hu"}


def test_a_study_not_analysed_gets_an_sr_saying_so_and_no_gsps() -> None:
    sources = head_series(BLOB, body_part="CHEST")
    results = build_results(analyse(sources), sources)

    report = _report(_reread(results.sr))

    assert results.gsps == [] and results.ai_result.findings == []
    assert report.get_planar_roi_measurement_groups() == []
    [assessment] = report.get_image_measurement_groups()
    evaluations = {_code(q.name): _code(q.value) for q in assessment.get_qualitative_evaluations()}
    assert evaluations[("APPLICABLE", "99MERIDIAN")] == ("373067005", "SCT")  # No


def test_enhanced_ct_results_reference_the_frame() -> None:
    ds = enhanced_head({3: (18, 18, 32, 34)})
    results = build_results(analyse([ds]), [ds])

    sr = _reread(results.sr)
    gsps = _reread(results.gsps[0])

    [group] = _report(sr).get_planar_roi_measurement_groups()
    assert isinstance(group.roi, hd.sr.ImageRegion)
    reference = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedFrameNumber) == (
        ds.SOPInstanceUID, 3,
    )  # fmt: skip
    image = gsps.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
    assert image.ReferencedFrameNumber == 3


# -- the node between real peers ---------------------------------------------------


class Callback:
    """A stdlib HTTP server recording POST bodies; answers the given statuses, then 200."""

    def __init__(self, statuses: Sequence[int] = ()) -> None:
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        statuses_left = list(statuses)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.bodies.append(body)
                outer.times.append(time.monotonic())
                self.send_response(statuses_left.pop(0) if statuses_left else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ai-results"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[StoreSCP]:
    """The hub's results AE: a storescp."""
    with StoreSCP(tmp_path / "hub", aet="MERIDIAN_AI") as scp:
        yield scp


@pytest.fixture
def callback() -> Iterator[Callback]:
    server = Callback()
    yield server
    server.close()


def _node(hub: StoreSCP, **config: Any) -> AINode:
    settings = AINodeConfig(
        port=0, bind_address="127.0.0.1", results_port=hub.port, quiet_seconds=0.3,
        retry_backoff_seconds=0.05, timeout_seconds=5, **config,
    )  # fmt: skip
    return AINode(settings).start()


def _storescu(node: AINode, paths: Sequence[Path], called: str = "AI_NODE") -> int:
    args = ["storescu", "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(node.bound_port)]
    run = subprocess.run([*args, *map(str, paths)], capture_output=True, timeout=30, check=False)
    return run.returncode


def _write(datasets: Sequence[Dataset], directory: Path) -> list[Path]:
    return [write_dataset(ds, directory / f"{n:03}.dcm") for n, ds in enumerate(datasets)]


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_study_sent_to_the_node_comes_back_as_sr_gsps_and_json(
    tmp_path: Path, hub: StoreSCP, callback: Callback, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ainode")
    sources = head_series(BLOB)
    node = _node(hub, callback_url=callback.url)
    try:
        assert _storescu(node, _write(sources, tmp_path / "study")) == 0
        _wait_for(lambda: len(hub.received()) == 2 and len(callback.bodies) == 1)
    finally:
        node.stop()

    received = {str(ds.SOPClassUID): ds for ds in map(dcmread, hub.received())}
    sr = received["1.2.840.10008.5.1.4.1.1.88.34"]
    gsps = received["1.2.840.10008.5.1.4.1.1.11.1"]
    assert sr.StudyInstanceUID == gsps.StudyInstanceUID == sources[0].StudyInstanceUID
    result = AIResult.model_validate_json(callback.bodies[0])
    assert result.status == "completed"
    assert set(result.result_sop_instance_uids) == {sr.SOPInstanceUID, gsps.SOPInstanceUID}
    [finding] = result.findings
    assert finding.referenced_sop_instance_uid == _uid_of(sources, 5)
    assert finding.bounding_box == [float(v) for v in BLOB_BOX]
    assert node.processed == 1
    assert "finding(s)" in caplog.text
    for phi in ("Synthetic", "SYN0001", "19700101", "ACC0001", "Referrer"):
        assert phi not in caplog.text


def test_results_still_posted_when_the_hub_is_down(tmp_path: Path, callback: Callback) -> None:
    hub = StoreSCP(tmp_path / "hub", aet="MERIDIAN_AI")  # never started: connection refused
    node = _node(hub, callback_url=callback.url, send_attempts=2)
    try:
        assert _storescu(node, _write(head_series(BLOB), tmp_path / "study")) == 0
        _wait_for(lambda: len(callback.bodies) == 1)
    finally:
        node.stop()

    assert len(AIResult.model_validate_json(callback.bodies[0]).findings) == 1


def test_a_failing_callback_is_retried(tmp_path: Path, hub: StoreSCP) -> None:
    callback = Callback(statuses=[503, 503])
    node = _node(hub, callback_url=callback.url, send_attempts=3)
    try:
        assert _storescu(node, _write(head_series(), tmp_path / "study")) == 0
        _wait_for(lambda: len(callback.bodies) == 3)
        assert node.wait_idle(5)
    finally:
        node.stop()
        callback.close()

    assert AIResult.model_validate_json(callback.bodies[-1]).findings == []
    assert len(hub.received()) == 1  # no finding: the SR only


def test_the_delay_holds_results_back(tmp_path: Path, hub: StoreSCP, callback: Callback) -> None:
    node = _node(hub, callback_url=callback.url, delay_seconds=1.0)
    try:
        assert _storescu(node, _write(head_series(slices=3), tmp_path / "study")) == 0
        sent = time.monotonic()
        _wait_for(lambda: len(callback.bodies) == 1)
    finally:
        node.stop()

    assert callback.times[0] - sent >= 1.0 + 0.3  # quiet period, then the delay


def test_an_association_for_another_ae_title_is_refused(tmp_path: Path, hub: StoreSCP) -> None:
    node = _node(hub)
    try:
        assert _storescu(node, _write(head_series(slices=2), tmp_path / "s"), "OTHER") != 0
        assert node.wait_idle(2)
    finally:
        node.stop()

    assert node.processed == 0
    assert hub.received() == []


# -- the command -------------------------------------------------------------------


def test_the_subcommand_options_map_to_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    args = parser.parse_args(["--port", "0", "--results-ae", "HUB_AI", "--delay-seconds", "2"])

    assert (args.port, args.ae_title, args.results_ae, args.delay_seconds) == (
        0, "AI_NODE", "HUB_AI", 2.0,
    )  # fmt: skip
    assert args.func.__name__ == "run"


def test_the_command_runs_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ainode.cli", "--port", "0", "--bind", "127.0.0.1"],
        stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "ready" in line:
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_port_in_use_fails_to_start_and_leaves_nothing_running(hub: StoreSCP) -> None:
    first = _node(hub)
    try:
        second = AINode(AINodeConfig(port=first.bound_port, bind_address="127.0.0.1"))
        threads = threading.active_count()
        with pytest.raises(OSError):
            second.start()
        assert threading.active_count() == threads  # watcher joined, no worker left
    finally:
        first.stop()
