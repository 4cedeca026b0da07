"""The library side of ``medsearch search``: who acts, the search, reveal, the table.

**Who acts.**  ``--as NAME`` (or ``MEDSEARCH_USER``) names an account of the
instance (``medsearch users add``); its role and allowed sites apply, and the
audit log records that name.  A disabled or unknown account is refused.
Without ``--as``, the local operator acts as ``cli:<OS user>`` with no site
restriction: whoever can run the CLI on the server can read the instance's
keys anyway, so a password would add no protection, but the audit log still
names who ran it.  ``--reveal`` needs ``--as`` with an **admin** account and a
``--reason``; the original identifiers are decrypted through
:func:`medsearch.dicom.vault.reveal`, which audits each study.
"""

from __future__ import annotations

import getpass

from medsearch.errors import AuthError, ForbiddenError, InputError

REVEAL_ROLES = ("admin",)


def operator_name() -> str:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return f"cli:{who}"[:64]


def acting_user(inst, name: str | None):
    """The principal of ``--as NAME``, or the local operator (no site restriction)."""
    from medsearch.accounts import Principal, current_principal

    if not name:
        return Principal(operator_name(), "operator", "cli", None)
    principal = current_principal(inst, name)
    if principal is None:
        raise AuthError(f"No enabled account named '{name}'.",
                        "Run 'medsearch users list'; pass --as with an enabled account.")
    return principal


def run_search(inst, text: str, k: int, user) -> dict:
    from medsearch.search import search

    return search(inst, text, k=k, user=user)


def check_reveal(user, reason: str | None) -> None:
    """--reveal needs an admin account and a reason (checked before anything is searched)."""
    if getattr(user, "role", None) not in REVEAL_ROLES:
        raise ForbiddenError("--reveal needs an admin account.",
                             "Pass --as NAME with an admin account (medsearch users add NAME --role admin).")
    if not (reason or "").strip():
        raise InputError("--reveal needs a reason.", "Add --reason TEXT; it is recorded in the audit log.")


def reveal_results(inst, out: dict, user, reason: str | None) -> None:
    """Add ``study_uid`` and ``accession`` to each result (admin only, audited per study)."""
    from medsearch.dicom.vault import reveal

    check_reveal(user, reason)
    for r in out["results"]:
        values = reveal(inst, "study", r["study"], ("StudyInstanceUID", "AccessionNumber"), user.name, reason)
        r["study_uid"] = values.get("StudyInstanceUID")
        r["accession"] = values.get("AccessionNumber")


def format_table(out: dict) -> str:
    """A short human-readable table of the results (pseudonyms, never identifiers unless revealed)."""
    lines = [f"query: {out['query'].get('canonical') or ''}  ({out['total']} studies matched, "
             f"{out['took_ms']:.0f} ms)"]
    if not out["results"]:
        lines.append("no results")
    for i, r in enumerate(out["results"], 1):
        line = (f"{i:>3}. {r['study']}  score {r['score']:.3f}  slice {r['key_slice']}  "
                f"matched: {', '.join(r['matched']) or '-'}")
        if r["unmatched"]:
            line += f"  unmatched: {', '.join(r['unmatched'])}"
        if "study_uid" in r:
            line += f"\n     StudyInstanceUID {r['study_uid']}  accession {r['accession']}"
        lines.append(line)
    return "\n".join(lines)
