"""Channel files: a bad file is rejected at load with its file, line and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ChannelFileError
from engine.loader import load_channel, load_channels

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: orders
source:
  type: mllp
  port: 2575
transform:
  template: orm_to_mwl.j2
  output: mwl-items
destinations:
  - name: worklist
    type: worklist
"""


def write(tmp_path: Path, text: str, name: str = "channel.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_channels_load() -> None:
    channels = load_channels(REPO / "channels")
    assert "orders-to-worklist" in [c.name for c in channels]


def test_good_channel_loads_with_connector_configs(tmp_path: Path) -> None:
    channel = load_channel(write(tmp_path, GOOD))
    assert channel.name == "orders"
    assert channel.source.port == 2575
    assert channel.destinations[0].spec.name == "worklist"


@pytest.mark.parametrize(
    ("text", "line", "field", "reason"),
    [
        (GOOD.replace("port: 2575", "port: 99999"), 4, "source.port", "less than or equal"),
        (
            GOOD.replace("port: 2575", "prot: 2575"),
            4,
            "source.prot",
            "unknown field 'prot'; did you mean 'port'?",
        ),
        (
            GOOD.replace("    type: worklist", "    type: worklst"),
            10,
            "destinations.0.type",
            "did you mean 'worklist'",
        ),
        (
            GOOD.replace("  output: mwl-items", "  output: dicom"),
            7,
            "transform.output",
            "Input should be",
        ),
        (GOOD.replace("name: orders", "name: Orders Channel"), 1, "name", "pattern"),
        (
            GOOD.replace("  - name: worklist\n", "  - nam: worklist\n"),
            9,
            "destinations.0.name",
            "required",
        ),
    ],
)
def test_bad_field_is_named_with_its_line(
    tmp_path: Path, text: str, line: int, field: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ChannelFileError) as caught:
        load_channel(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert reason in error.reason


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  port: 2575", "  port: [2575"))
    with pytest.raises(ChannelFileError) as caught:
        load_channel(path)
    assert caught.value.line is not None and caught.value.line >= 4


def test_duplicate_channel_names_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(ChannelFileError, match="also defined"):
        load_channels(tmp_path)


def test_meridian_check_reports_file_line_and_field(tmp_path: Path) -> None:
    channels = tmp_path / "channels"
    channels.mkdir()
    write(channels, GOOD.replace("port: 2575", "port: nope"))
    meridian = Path(sys.executable).parent / "meridian"
    result = subprocess.run(
        [
            str(meridian),
            "check",
            "--channels",
            str(channels),
            "--transforms",
            str(REPO / "transforms"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"{channels / 'channel.yaml'}:4: source.port:" in result.stderr


def test_meridian_check_reports_template_syntax_errors(tmp_path: Path) -> None:
    channels, transforms = tmp_path / "channels", tmp_path / "transforms"
    channels.mkdir()
    transforms.mkdir()
    (transforms / "orm_to_mwl.j2").write_text("line one\n{% for x in %}\n")
    write(channels, GOOD)
    meridian = Path(sys.executable).parent / "meridian"
    result = subprocess.run(
        [str(meridian), "check", "--channels", str(channels), "--transforms", str(transforms)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "orm_to_mwl.j2:2" in result.stderr


def test_meridian_check_passes_on_the_shipped_channels() -> None:
    meridian = Path(sys.executable).parent / "meridian"
    result = subprocess.run(
        [str(meridian), "check", "--channels", str(REPO / "channels")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_shipped_hub_settings_file_is_valid() -> None:
    from engine.config import HubSettings, load_settings_file

    settings = HubSettings.model_validate(load_settings_file(REPO / "meridian.yaml"))
    assert settings.reading_worklist.subspecialties["CT:HEAD"] == "neuro"
    assert [r.name for r in settings.reading_worklist.radiologists][:1] == ["dr.neuro"]


def test_settings_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "meridian.yaml"
    bad.write_text("dicom:\n  ae_titel: X\n")
    meridian = Path(sys.executable).parent / "meridian"
    result = subprocess.run(
        [str(meridian), "check", "--config", str(bad), "--channels", str(REPO / "channels")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "dicom.ae_titel" in result.stderr and "Traceback" not in result.stderr
