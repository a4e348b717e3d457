"""PS3.15 Annex E, Table E.1-1 as data: what the Basic Profile does to each attribute.

Action codes (PS3.15 E.1.1): ``X`` remove, ``Z`` empty, ``D`` dummy value, ``K`` keep,
``C`` clean, ``U`` replace UIDs (on a sequence: keep it, replacing the UIDs inside).
The standard's compound codes are reduced to one action, the strictest that keeps the
dataset usable: ``Z/D``, ``X/Z`` and ``X/Z/D`` → ``Z`` (empty carries no more than
absent, and type 2 attributes stay present); ``X/D`` → ``X``; ``X/Z/U*`` → ``U`` (image
references keep working, with replaced UIDs).

On top of the table (see :func:`effective_actions`):

* Retain Longitudinal Temporal Information with Modified Dates (always on): every DA
  and DT is shifted by the patient's offset (``C``); times are kept, since a shift by
  whole days leaves them unchanged. Exceptions: PatientBirthDate is emptied and
  PatientBirthTime removed (re-identification restores them from the mapping).
* Every UI is replaced (``U``) except class UIDs, transfer syntaxes, coding schemes and
  any UID of the DICOM registry (``1.2.840.10008.*``).
* Attributes the table does not list are kept, except that a safety net removes free
  text (LT, ST, UT, UC, UN) and empties person names (PN): those carry PHI whatever
  their tag. Private tags, curves (50xx) and overlays (60xx) are always removed.
* Options: retain device identity / patient characteristics (``K``), clean descriptors
  (``C``: the patient's own identifiers are erased from the text, the rest kept).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword

__all__ = [
    "BASIC_PROFILE",
    "DICOM_UID_ROOT",
    "KEEP_UID_KEYWORDS",
    "PATIENT_ATTRIBUTES",
    "STUDY_ATTRIBUTES",
    "DeidConfig",
    "default_action",
    "effective_actions",
    "method_codes",
    "shift_date",
]


def _actions(action: str, keywords: str) -> dict[str, str]:
    return dict.fromkeys(keywords.split(), action)


#: Table E.1-1, keyword → reduced action (see the module docstring).
BASIC_PROFILE: dict[str, str] = {
    # -- patient --------------------------------------------------------------
    **_actions("Z", "PatientName PatientID PatientBirthDate PatientSex PatientSexNeutered"),
    **_actions(
        "X",
        """
        PatientBirthTime PatientAge PatientSize PatientWeight PatientAddress PatientBirthName
        PatientMotherBirthName OtherPatientIDs OtherPatientIDsSequence OtherPatientNames
        IssuerOfPatientID PatientTelephoneNumbers PatientTelecomInformation EthnicGroup
        Occupation AdditionalPatientHistory PatientComments MedicalRecordLocator MilitaryRank
        BranchOfService CountryOfResidence RegionOfResidence PatientReligiousPreference
        MedicalAlerts Allergies SmokingStatus PregnancyStatus LastMenstrualDate
        PatientInsurancePlanCodeSequence PatientPrimaryLanguageCodeSequence
        PatientPrimaryLanguageModifierCodeSequence InsurancePlanIdentification
        ResponsiblePerson ResponsibleOrganization ReferencedPatientSequence
        ReferencedPatientPhotoSequence ReferencedPatientAliasSequence PatientState
        PatientInstitutionResidence SpecialNeeds PatientTransportArrangements
        ConfidentialityConstraintOnPatientDataDescription
        """,
    ),
    # -- visit and admission ----------------------------------------------------
    **_actions(
        "X",
        """
        AdmissionID IssuerOfAdmissionID IssuerOfAdmissionIDSequence AdmittingDiagnosesDescription
        AdmittingDiagnosesCodeSequence DischargeDiagnosisDescription CurrentPatientLocation
        ServiceEpisodeID ServiceEpisodeDescription IssuerOfServiceEpisodeID
        IssuerOfServiceEpisodeIDSequence VisitComments ScheduledPatientInstitutionResidence
        ReasonForVisit ReasonForVisitCodeSequence
        """,
    ),
    # -- study, order and request -----------------------------------------------
    **_actions(
        "Z",
        """
        AccessionNumber StudyID ReferringPhysicianName ConsultingPhysicianName
        PlacerOrderNumberImagingServiceRequest FillerOrderNumberImagingServiceRequest
        ReferencedStudySequence RequestedProcedureDescription
        """,
    ),
    **_actions(
        "X",
        """
        StudyDescription StudyComments StudyIDIssuer IssuerOfAccessionNumberSequence
        ReasonForStudy RequestingPhysician
        RequestingService RequestedProcedureID RequestedProcedureComments
        RequestedProcedureLocation RequestAttributesSequence ReasonForTheRequestedProcedure
        ReasonForRequestedProcedureCodeSequence ReasonForTheImagingServiceRequest
        ImagingServiceRequestComments OrderEnteredBy OrderEntererLocation
        OrderCallbackPhoneNumber OrderCallbackTelecomInformation RequestedContrastAgent
        ScheduledStudyLocation ScheduledStudyLocationAETitle ReferringPhysicianAddress
        ReferringPhysicianTelephoneNumbers ReferringPhysicianIdentificationSequence
        ConsultingPhysicianIdentificationSequence NamesOfIntendedRecipientsOfResults
        IntendedRecipientsOfResultsIdentificationSequence PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence NameOfPhysiciansReadingStudy
        PhysiciansReadingStudyIdentificationSequence IdentifyingComments
        """,
    ),
    # -- procedure steps --------------------------------------------------------
    **_actions("Z", "ReferencedPerformedProcedureStepSequence"),
    **_actions(
        "X",
        """
        PerformedProcedureStepID PerformedProcedureStepDescription
        CommentsOnThePerformedProcedureStep PerformedLocation PerformedStationName
        PerformedStationAETitle PerformedStationNameCodeSequence
        PerformedStationGeographicLocationCodeSequence ScheduledProcedureStepID
        ScheduledProcedureStepDescription ScheduledProcedureStepLocation
        ScheduledPerformingPhysicianName ScheduledPerformingPhysicianIdentificationSequence
        ScheduledStationName ScheduledStationAETitle ScheduledStationNameCodeSequence
        ScheduledStationGeographicLocationCodeSequence ScheduledHumanPerformersSequence
        ActualHumanPerformersSequence HumanPerformerName HumanPerformerOrganization
        PreMedication CommentsOnRadiationDose
        """,
    ),
    # -- series, acquisition and image --------------------------------------------
    **_actions(
        "X",
        """
        SeriesDescription ProtocolName AcquisitionComments AcquisitionProtocolDescription
        AcquisitionDeviceProcessingDescription ImageComments FrameComments
        ImagePresentationComments DerivationDescription RequestedSeriesDescription
        ModifiedImageDescription ContrastBolusAgent IconImageSequence
        RespiratoryMotionCompensationTechniqueDescription MultienergyAcquisitionDescription
        DecompositionDescription
        """,
    ),
    **_actions("U", "ReferencedImageSequence SourceImageSequence"),
    # -- equipment and device -----------------------------------------------------
    **_actions("Z", "StationName DeviceSerialNumber SourceSerialNumber TreatmentMachineName"),
    **_actions(
        "X",
        """
        DetectorID GantryID GeneratorID PlateID CassetteID DeviceDescription
        LongDeviceDescription XRayDetectorID XRaySourceID XRayDetectorLabel DeviceLabel
        DeviceAlternateIdentifier ManufacturerDeviceIdentifier UniqueDeviceIdentifier
        UDISequence TransducerIdentificationSequence ModifyingDeviceID StationAETitle
        RetrieveAETitle NetworkID LensMake LensModel LensSerialNumber LensSpecification
        CameraOwnerName MakerNote DeviceSettingDescription
        """,
    ),
    # -- institution, operators, other people -------------------------------------
    **_actions("Z", "InstitutionName InstitutionCodeSequence OperatorsName ContentCreatorName"),
    **_actions(
        "X",
        """
        InstitutionAddress InstitutionalDepartmentName InstitutionalDepartmentTypeCodeSequence
        OperatorIdentificationSequence PerformingPhysicianName
        PerformingPhysicianIdentificationSequence ContentCreatorIdentificationCodeSequence
        PersonAddress PersonTelephoneNumbers PersonTelecomInformation
        PersonIdentificationCodeSequence PersonName VerifyingObserverName
        VerifyingObserverSequence VerifyingObserverIdentificationCodeSequence
        VerifyingOrganization AuthorObserverSequence ParticipantSequence
        CustodialOrganizationSequence ReviewerName
        """,
    ),
    # -- structured content, documents, annotations, signatures -------------------
    **_actions(
        "X",
        """
        ContentSequence AcquisitionContextSequence EncapsulatedDocument GraphicAnnotationSequence
        TextString TextComments Arbitrary DigitalSignaturesSequence MAC
        ReferencedDigitalSignatureSequence ReferencedSOPInstanceMACSequence CertificateOfSigner
        OriginalAttributesSequence ModifiedAttributesSequence
        NonconformingModifiedAttributesSequence NonconformingDataElementValue
        InstanceOriginStatus DataSetTrailingPadding BarcodeValue LabelText
        TopicTitle TopicSubject TopicAuthor TopicKeywords TimezoneOffsetFromUTC
        Impressions InterpretationText InterpretationAuthor InterpretationRecorder
        InterpretationTranscriber InterpretationDiagnosisDescription InterpretationApproverSequence
        PhysicianApprovingInterpretation InterpretationIDIssuer ResultsIDIssuer ResultsComments
        DistributionName DistributionAddress ResultsDistributionListSequence
        """,
    ),
    # -- clinical trials and specimens ---------------------------------------------
    **_actions(
        "Z",
        """
        ClinicalTrialSponsorName ClinicalTrialProtocolID ClinicalTrialProtocolName
        ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID
        ClinicalTrialSubjectReadingID ClinicalTrialTimePointID ClinicalTrialCoordinatingCenterName
        """,
    ),
    **_actions(
        "X",
        """
        ClinicalTrialProtocolEthicsCommitteeName
        ClinicalTrialProtocolEthicsCommitteeApprovalNumber ClinicalTrialSeriesID
        ClinicalTrialSeriesDescription ClinicalTrialTimePointDescription
        ContainerIdentifier ContainerDescription SpecimenIdentifier SpecimenAccessionNumber
        SpecimenShortDescription SpecimenDetailedDescription SlideIdentifier
        """,
    ),
    # -- UIDs (every other UI is replaced too; listed for reference) -----------------
    **_actions(
        "U",
        """
        StudyInstanceUID SeriesInstanceUID SOPInstanceUID FrameOfReferenceUID
        SynchronizationFrameOfReferenceUID ReferencedSOPInstanceUID ReferencedFrameOfReferenceUID
        RelatedFrameOfReferenceUID InstanceCreatorUID IrradiationEventUID ConcatenationUID
        DimensionOrganizationUID DeviceUID TransactionUID TrackingUID UID ObservationUID
        MediaStorageSOPInstanceUID ReferencedSOPInstanceUIDInFile DoseReferenceUID
        FiducialUID StorageMediaFileSetUID PaletteColorLookupTableUID
        LargePaletteColorLookupTableUID TemplateExtensionOrganizationUID
        TemplateExtensionCreatorUID AcquisitionUID PyramidUID SpecimenUID
        """,
    ),
    # -- dates and times (Modified Dates option: shifted; times kept) ----------------
    **_actions(
        "C",
        """
        StudyDate SeriesDate AcquisitionDate ContentDate AcquisitionDateTime
        InstanceCreationDate OverlayDate CurveDate PerformedProcedureStepStartDate
        PerformedProcedureStepEndDate ScheduledProcedureStepStartDate
        """,
    ),
}

# Retain Device Identity Option (PS3.15 E.3.7).
_DEVICE_IDENTITY = """
    StationName DeviceSerialNumber SourceSerialNumber TreatmentMachineName DetectorID GantryID
    GeneratorID PlateID CassetteID DeviceDescription LongDeviceDescription XRayDetectorID
    XRaySourceID XRayDetectorLabel DeviceLabel DeviceAlternateIdentifier DeviceUID
    ManufacturerDeviceIdentifier UniqueDeviceIdentifier UDISequence
    TransducerIdentificationSequence ModifyingDeviceID PerformedStationName ScheduledStationName
    """
# Retain Patient Characteristics Option (PS3.15 E.3.6).
_PATIENT_CHARACTERISTICS = """
    PatientSex PatientAge PatientSize PatientWeight EthnicGroup SmokingStatus PregnancyStatus
    PatientSexNeutered
    """
# Clean Descriptors Option (PS3.15 E.3.5): kept, with the patient's identifiers erased.
_DESCRIPTORS = """
    StudyDescription SeriesDescription ProtocolName PerformedProcedureStepDescription
    RequestedProcedureDescription ScheduledProcedureStepDescription ImageComments
    AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription
    DerivationDescription ContrastBolusAgent
    """

#: Patient attributes kept in the mapping for re-identification (PHI at rest, see deid).
PATIENT_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
)
#: Study attributes kept in the mapping for re-identification of results.
STUDY_ATTRIBUTES = (
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyID",
    "StudyDescription",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)

# Kept whatever their VR says: they name standard things, not instances.
KEEP_UID_KEYWORDS = frozenset(
    {"TransferSyntaxUID", "ReferencedTransferSyntaxUIDInFile", "CodingSchemeUID",
     "ContextGroupExtensionCreatorUID", "ContextUID", "MappingResourceUID",
     "ImplementationClassUID", "PrivateInformationCreatorUID"}
)  # fmt: skip
DICOM_UID_ROOT = "1.2.840.10008."

_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "UN"})

# Codes of CID 7050 (De-identification Method).
_BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
_MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
_OPTION_CODES = {
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
}


class DeidConfig(BaseModel):
    """De-identification of a destination (a ``deidentify:`` block of a destination)."""

    model_config = ConfigDict(extra="forbid")

    uid_root: str = Field(
        default="2.25.", pattern=r"^[0-9]+(\.[0-9]+)*\.$", max_length=30,
        description="root of the replacement UIDs; 2.25. gives 2.25.<UUID as integer>",
    )  # fmt: skip
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    clean_descriptors: bool = False
    min_date_shift_days: int = Field(default=30, ge=1)
    max_date_shift_days: int = Field(default=365, ge=1, le=36500)
    refuse_unmarked_modalities: list[str] = Field(
        default_factory=lambda: ["US", "XC", "ES", "OT"],
        description="modalities whose images are refused unless BurnedInAnnotation is NO: "
        "they often carry burned-in text without saying so",
    )
    pseudonym_prefix: str = Field(default="ANON", pattern=r"^[A-Z0-9]{1,16}$")

    @model_validator(mode="after")
    def _shift_range(self) -> DeidConfig:
        if self.min_date_shift_days > self.max_date_shift_days:
            raise ValueError("min_date_shift_days must not exceed max_date_shift_days")
        return self


def effective_actions(config: DeidConfig) -> dict[int, str]:
    """Tag → action for ``config``: the table, then the options and the VR rules."""
    actions = dict(BASIC_PROFILE)
    retained = [
        (config.retain_device_identity, _DEVICE_IDENTITY, "K"),
        (config.retain_patient_characteristics, _PATIENT_CHARACTERISTICS, "K"),
        (config.clean_descriptors, _DESCRIPTORS, "C"),
    ]
    for enabled, keywords, action in retained:
        if enabled:
            actions.update(_actions(action, keywords))
    by_tag: dict[int, str] = {}
    for keyword, action in actions.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"deid profile: unknown keyword {keyword}")  # a bug in the table
        by_tag[tag] = _by_vr(keyword, dictionary_VR(tag), action)
    return by_tag


def _by_vr(keyword: str, vr: str, action: str) -> str:
    """The Modified Dates option and the UID rule, applied to one table entry."""
    if keyword == "PatientBirthDate":
        return "Z"
    if keyword == "PatientBirthTime":
        return "X"
    if vr in ("DA", "DT"):
        return "C"
    if vr == "TM":
        return "K"
    if vr == "UI" and action != "K":
        return "U"
    return action


def default_action(keyword: str, vr: str) -> str:
    """The action for an attribute the table does not list (see the module docstring)."""
    if vr == "UI":
        return "K" if keyword in KEEP_UID_KEYWORDS or keyword.endswith("ClassUID") else "U"
    if vr in ("DA", "DT"):
        return "C"
    if vr == "PN":
        return "Z"
    if vr in _FREE_TEXT_VRS:
        return "X"
    return "K"


def method_codes(config: DeidConfig) -> list[tuple[str, str]]:
    """(code value, meaning) of the profile and of each option used (CID 7050, DCM)."""
    codes = [_BASIC_CODE, _MODIFIED_DATES_CODE]
    codes += [code for option, code in _OPTION_CODES.items() if getattr(config, option)]
    return codes


def shift_date(value: str, days: int, latest: date | None = None) -> str | None:
    """A DA or DT value shifted by ``days`` (Modified Dates); ``None`` without a full date.

    With ``latest``, a date after it is returned unchanged (re-identification: a date
    the AI wrote itself, not one from the shifted timeline).
    """
    text = value.strip()
    try:
        day = datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
    if latest is not None and day > latest:
        return text
    return (day + timedelta(days=days)).strftime("%Y%m%d") + text[8:]
