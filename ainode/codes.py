"""The codes of the AI node's SR (TID 1500), for the SR writer and whoever reads it back.

Standard codes where DICOM has one, a private scheme ``99MERIDIAN`` (PS3.16
8.2: a "99" prefix marks a local coding scheme) for what it has not:

Document (TID 1500 Measurement Report)
    Procedure reported: (24725-4, LN, "Head CT").
    Observer: a device, (121007, DCM), its name and model "meridian-hyperdense".

Study assessment: one TID 1501 measurement group, always present
    Tracking identifier "Study assessment".
    (APPLICABLE, 99MERIDIAN, "Algorithm applicable") = (373066001, SCT, "Yes") or
    (373067005, SCT, "No"): No for a study that is not CT head, with no ROI groups.
    (CRITICAL, 99MERIDIAN, "Critical finding") = Yes/No: whether any finding is critical.

One finding: one TID 1410 planar ROI measurement group
    Finding type (HYPERDENSE, 99MERIDIAN, "Hyperdense region"); finding site
    (12738006, SCT, "Brain"); tracking identifier "Hyperdense region <n>" + a UID.
    Image region: SCOORD POLYLINE, the closed rectangle of the bounding box
    (5 points, pixel edges) on the key slice (SOP instance, frame if multi-frame).
    Measurements (the group's algorithm identification covers them):
      (118565006, SCT, "Volume") in (mm3, UCUM, "cubic millimeter");
      (112031, DCM, "Attenuation Coefficient") with derivation (373098007, SCT,
      "Mean") in ([hnsf'U], UCUM, "Hounsfield unit");
      (SCORE, 99MERIDIAN, "Hyperdense region score") in (1, UCUM, "no units"), 0 to 1.
    Qualitative evaluation (CRITICAL, 99MERIDIAN, "Critical finding") = Yes/No.

Algorithm identification (TID 4019) in every group: (111001, DCM, "Algorithm
Name") = "meridian-hyperdense", (111003, DCM, "Algorithm Version") = the
package version, (111002, DCM, "Algorithm Parameters") = the settings.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "APPLICABLE",
    "ATTENUATION",
    "BRAIN",
    "CRITICAL",
    "DEVICE",
    "FINDING_CODE",
    "FINDING_LABEL",
    "HOUNSFIELD_UNIT",
    "HYPERDENSE_REGION",
    "MEAN",
    "MERIDIAN_SCHEME",
    "NO",
    "NO_UNITS",
    "PROCEDURE_HEAD_CT",
    "SCORE",
    "STUDY_ASSESSMENT",
    "VOLUME",
    "VOLUME_UNIT",
    "YES",
]

MERIDIAN_SCHEME = "99MERIDIAN"

HYPERDENSE_REGION = Code("HYPERDENSE", MERIDIAN_SCHEME, "Hyperdense region")
SCORE = Code("SCORE", MERIDIAN_SCHEME, "Hyperdense region score")
CRITICAL = Code("CRITICAL", MERIDIAN_SCHEME, "Critical finding")
APPLICABLE = Code("APPLICABLE", MERIDIAN_SCHEME, "Algorithm applicable")

PROCEDURE_HEAD_CT: Code = codes.LN.HeadCT
DEVICE: Code = codes.DCM.Device
BRAIN: Code = codes.SCT.Brain
VOLUME: Code = codes.SCT.Volume
VOLUME_UNIT: Code = codes.UCUM.CubicMillimeter
ATTENUATION: Code = codes.DCM.AttenuationCoefficient
MEAN: Code = codes.SCT.Mean
HOUNSFIELD_UNIT: Code = codes.UCUM.HounsfieldUnit
NO_UNITS: Code = codes.UCUM.NoUnits
YES: Code = codes.SCT.Yes
NO: Code = codes.SCT.No

# Tracking identifier of the study-level group (TID 1501).
STUDY_ASSESSMENT = "Study assessment"

# The JSON (AIResult) side of the same finding.
FINDING_CODE = "hyperdense-region"
FINDING_LABEL = "Hyperdense region"
