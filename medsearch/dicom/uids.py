"""Keyed replacement UIDs.

``new_uid(secret, uid)`` maps an original UID to a new, valid UID: the same
original always gives the same replacement (so references between instances,
Referenced/Source Image sequences and FrameOfReferenceUID stay consistent
across files, runs and restarts), and without the secret the original cannot
be recovered or confirmed.  Any date or MRN a modality embedded in a UID goes
with it.

Form: ``2.25.<decimal of 128 keyed bits>`` (PS3.5 B.2, at most 44 characters),
or ``<uid_root>.<decimal digits>`` filling at most 64 characters.
"""

from __future__ import annotations

import re

from medsearch.dicom.pseudonym import keyed_digest, normalise
from medsearch.errors import ConfigError

MAX_UID = 64
_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_root(root: str) -> str:
    """Validate the configured UID root (settings ``uid_root``)."""
    if root and (not _ROOT.match(root) or len(root) > MAX_UID - 12):
        raise ConfigError(f"Setting 'uid_root' is not a valid UID root of at most {MAX_UID - 12} characters.",
                          "Use your organisation's registered root such as 1.2.826.0.1.3680043.10.999, "
                          "or leave it empty for the 2.25 form.")
    return root


def new_uid(secret: bytes, uid: object, root: str = "") -> str:
    """The replacement of ``uid`` (normalised: trailing padding is not part of a UID)."""
    number = int.from_bytes(keyed_digest(secret, "uid", normalise(uid))[:16], "big")
    if not root:
        return f"2.25.{number}"
    digits = str(number)[: MAX_UID - len(root) - 1]
    return f"{root}.{digits}"


def is_valid_uid(uid: str) -> bool:
    return bool(uid) and len(uid) <= MAX_UID and bool(_ROOT.match(uid))
