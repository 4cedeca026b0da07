"""Read untrusted DICOM files without letting their values reach logs or warnings.

pydicom reports malformed values by logging and warning *with the value in the
message* ("Invalid value for VR DA: '<the value>'").  A value can be a name or
an MRN, so inside :func:`quiet` those warnings are suppressed and the
``pydicom`` logger never propagates to the application's handlers.  Problems
still surface: as outcomes with constant-text reasons.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError


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
