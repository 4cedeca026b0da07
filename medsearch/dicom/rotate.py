"""Master key rotation: rewrap every vault data key, reseal the index; interruptible and resumable.

Where the keys live during a rotation (``key_file`` defaults to ``keys/master.key``):

1. ``keys/master.key.next`` is created (mode 0600) holding the new key.  From then on
   both keys are readable, and new vault records are written under the *next* key.
2. Every :class:`~medsearch.store.models.VaultRecord` whose ``key_id`` is not the new
   key's id is rewrapped (data key unwrapped with the key it names, wrapped under the
   new key) in batches, each batch one transaction.  Ciphertexts are never touched.
3. Every sealed index file is re-encrypted under the new key (atomically).
4. The old key is kept as ``keys/master.key.retired-<id>`` (it is needed only to read
   database or index backups taken before the rotation; move it offline, then delete
   it), and ``master.key.next`` is renamed over ``master.key`` in one atomic step.

A kill at any point leaves a readable state: records carry the id of their key, and
both keys stay on disk until step 4.  Running ``medsearch keys rotate`` again resumes
where it stopped; it never generates a second new key while ``.next`` exists.

A master key supplied through ``MEDSEARCH_MASTER_KEY`` lives in a secrets manager,
not here, so it cannot be rotated by this command (it says so).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from tqdm import tqdm

from medsearch.dicom.vault import MasterKeys, aad, next_key_path, unwrap, wrap
from medsearch.errors import KeyringError
from medsearch.keyring import KEY_BYTES, key_id, write_key_file
from medsearch.store.models import VaultRecord

BATCH = 500


@dataclass
class RotationReport:
    old_key_id: str
    new_key_id: str
    rewrapped: int
    remaining: int
    index_files: int
    complete: bool

    def summary(self) -> str:
        state = "complete" if self.complete else f"interrupted, {self.remaining} record(s) left: run it again"
        return (f"master key {self.old_key_id} -> {self.new_key_id}: {self.rewrapped} vault record(s) rewrapped, "
                f"{self.index_files} index file(s) resealed; {state}")


def _reseal_index(inst, old: bytes, new: bytes) -> int:
    """Re-encrypt sealed index files under the new key; files already under it are skipped."""
    try:
        from medsearch.index.crypto import MAGIC, seal, unseal
    except ImportError:  # the index capability is absent: nothing is sealed
        return 0
    count = 0
    if not inst.index_dir.exists():
        return 0
    for path in sorted(p for p in inst.index_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                continue
        try:
            payload = unseal(path, old)
        except KeyringError:
            unseal(path, new)  # already resealed by an interrupted run (raises if neither key fits)
            continue
        seal(path, new, payload)
        count += 1
    return count


def rotate(inst, actor: str = "cli", limit: int | None = None, progress: bool = True) -> RotationReport:
    """Rotate the master key (or resume a rotation).

    Args:
        inst: the instance.
        actor: recorded in the audit event.
        limit: rewrap at most this many records, then stop as an interruption would (tests).
        progress: show a progress bar.
    """
    from medsearch.audit.events import AdminEvent

    if inst.env.get("MEDSEARCH_MASTER_KEY"):
        raise KeyringError("The master key comes from MEDSEARCH_MASTER_KEY, so it lives outside the instance.",
                           "Rotate it in your secrets manager: unset MEDSEARCH_MASTER_KEY, write the current key "
                           "to keys/master.key (mode 0600), run 'medsearch keys rotate', then store the new key.")
    key_file = inst.path(inst.settings.key_file)
    next_path = next_key_path(inst)
    if not next_path.exists():
        write_key_file(next_path, secrets.token_bytes(KEY_BYTES))
    keys = MasterKeys(inst)
    old, new = keys.current, keys.next
    new_id = key_id(new)
    with inst.sessions() as session:
        unknown = set(session.scalars(select(VaultRecord.key_id).distinct())) - set(keys.by_id)
        if unknown:
            keys.get(sorted(unknown)[0])  # raises a KeyringError naming the missing key
        todo = session.scalar(select(func.count()).select_from(VaultRecord).where(VaultRecord.key_id != new_id))
    done = 0
    bar = tqdm(total=todo if limit is None else min(todo, limit), desc="rewrap", unit="rec", disable=not progress)
    while limit is None or done < limit:
        take = BATCH if limit is None else min(BATCH, limit - done)
        with inst.sessions() as session, session.begin():
            batch = session.scalars(select(VaultRecord).where(VaultRecord.key_id != new_id)
                                    .order_by(VaultRecord.id).limit(take).with_for_update()).all()
            for rec in batch:
                bound = aad(rec.owner_kind, rec.owner_pseudonym, rec.field)
                rec.wrapped_key = wrap(new, unwrap(keys.get(rec.key_id), rec.wrapped_key, bound), bound)
                rec.key_id = new_id
        done += len(batch)
        bar.update(len(batch))
        if len(batch) < take:
            break
    bar.close()
    with inst.sessions() as session:
        remaining = session.scalar(select(func.count()).select_from(VaultRecord)
                                   .where(VaultRecord.key_id != new_id))
    report = RotationReport(key_id(old), new_id, done, remaining, 0, complete=False)
    if remaining:
        return report
    report.index_files = _reseal_index(inst, old, new)
    retired = key_file.with_name(f"{key_file.name}.retired-{key_id(old)}")
    if not retired.exists():
        write_key_file(retired, old)
    os.replace(next_path, key_file)
    inst.keyring.forget()
    report.complete = True
    inst.track(AdminEvent(actor=actor, action="keys_rotate", target=new_id,
                          detail={"old_key_id": report.old_key_id, "records": done}))
    return report
