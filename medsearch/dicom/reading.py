"""Read untrusted DICOM files without letting their values reach logs or warnings.

pydicom reports malformed values by logging and warning *with the value in the
message* ("Invalid value for VR DA: '<the value>'").  A value can be a name or
an MRN, so inside :func:`quiet` those warnings are suppressed and the
``pydicom`` logger never propagates to the application's handlers.  Problems
still surface: as outcomes with constant-text reasons.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset


def _silence_pydicom_logger() -> None:
    logger = logging.getLogger("pydicom")
    if logger.propagate or logger.level <= logging.CRITICAL:  # setLevel clears every logger's cache: once
        logger.propagate = False
        logger.setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def quiet():
    """Suppress pydicom's value-bearing warnings and log records for the duration."""
    _silence_pydicom_logger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_dicom(path, stop_before_pixels: bool = False) -> Dataset | None:
    """Read a DICOM file (a path or a binary file object), or return None when it is not DICOM.

    Files without the 128-byte preamble and 'DICM' prefix (allowed on some media)
    are accepted when they parse as a dataset with a SOP Class.

    Raises:
        OSError: the file cannot be read at all.
    """
    with quiet():
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            pass
        except (ValueError, EOFError, KeyError, TypeError, AttributeError, NotImplementedError):
            return None
        try:
            if hasattr(path, "seek"):
                path.seek(0)
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        except Exception:  # noqa: BLE001 - anything unparsable with force=True is simply not DICOM
            return None
        try:
            has_class = bool(ds.get("SOPClassUID"))
        except Exception:  # noqa: BLE001
            return None
        return ds if has_class else None


DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass
class Header:
    """A file read up to its pixel data, and where the pixel data starts (None: unknown, re-read)."""

    path: Path
    dataset: Dataset
    pixel_offset: int | None


def read_header(path: Path) -> Header | None:
    """Read a file up to its pixel data (None when it is not DICOM).

    pydicom stops *at* the pixel data tag, so the file position is where the rest of the
    dataset starts; :func:`attach_pixels` reads it from there instead of parsing the header twice.
    A deflated dataset has no such position in the file: it is re-read in full.
    """
    with quiet(), open(path, "rb") as fh:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except InvalidDicomError:
            ds = read_dicom(path, stop_before_pixels=True)
            return Header(path, ds, None) if ds is not None else None
        except (ValueError, EOFError, KeyError, TypeError, AttributeError, NotImplementedError):
            return None
        offset = fh.tell()
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return Header(path, ds, None if syntax == DEFLATED else offset)


def attach_pixels(header: Header, data: bytes) -> Dataset:
    """The full dataset: the header read earlier plus the elements from the pixel data on.

    Args:
        header: from :func:`read_header`, with a known pixel offset.
        data: the whole file's bytes.
    """
    ds = header.dataset
    implicit, little = ds.original_encoding
    with quiet():
        rest = read_dataset(io.BytesIO(data[header.pixel_offset:]), bool(implicit), little is not False)
        for tag in rest.keys():
            ds[tag] = rest.get_item(tag)
    return ds
