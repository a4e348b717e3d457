"""Building a C-FIND response from a stored worklist item (return keys, charset).

A response carries exactly the attributes the identifier asked for, with the
item's values or empty when the item lacks them, recursing into sequences
(PS3.4 C.2.2.1.2, C.2.2.2.6). Specific Character Set is then chosen from the
returned values: none for pure ASCII, ``ISO_IR 100`` when Latin-1 suffices,
else ``ISO_IR 192`` (UTF-8).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import DataElement, Dataset, Sequence
from pydicom.config import IGNORE
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

__all__ = ["character_set_for", "response_for"]

_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
# VRs whose values are encoded with the Specific Character Set (PS3.5 6.1.2.3).
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})


def response_for(item: Dataset, identifier: Dataset) -> Dataset:
    """The response identifier for one matching ``item``."""
    response = _return_keys(item, identifier)
    charset = character_set_for(response)
    if charset is not None:
        response.SpecificCharacterSet = charset
    elif _SPECIFIC_CHARACTER_SET in identifier:
        response.SpecificCharacterSet = ""  # asked for; the default repertoire
    return response


def _return_keys(item: Dataset, requested: Dataset) -> Dataset:
    response = Dataset()
    for elem in requested:
        if elem.tag == _SPECIFIC_CHARACTER_SET or elem.tag.element == 0:
            continue  # chosen per response; group lengths are not keys
        if elem.VR == "SQ":
            value = _sequence_keys(item.get(elem.tag), elem.value)
            response.add(DataElement(elem.tag, "SQ", value))
        elif elem.tag in item:
            # Stored values were validated on the way in.
            found = item[elem.tag]
            response.add(DataElement(found.tag, found.VR, found.value, validation_mode=IGNORE))
        else:
            response.add(DataElement(elem.tag, elem.VR, None, validation_mode=IGNORE))
    return response


def _sequence_keys(found: DataElement | None, requested: Sequence) -> Sequence:
    """Return keys of a sequence: an empty request returns the item's whole sequence."""
    if found is None or not found.value:
        return Sequence()
    if len(requested) == 0:
        return Sequence([_copy(ds) for ds in found.value])
    template = requested[0]
    return Sequence([_return_keys(ds, template) for ds in found.value])


def _copy(ds: Dataset) -> Dataset:
    copied = Dataset()
    copied.update(ds)
    return copied


def character_set_for(ds: Dataset) -> str | None:
    """The Specific Character Set the text values of ``ds`` need (None: ASCII)."""
    texts = list(_texts(ds))
    if all(text.isascii() for text in texts):
        return None
    if all(_encodes_in_latin1(text) for text in texts):
        return "ISO_IR 100"
    return "ISO_IR 192"


def _encodes_in_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _texts(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for child in elem.value:
                yield from _texts(child)
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            yield from (str(v) for v in values)
