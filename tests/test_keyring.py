import base64
import os

import pytest

from medsearch.errors import KeyringError
from medsearch.keyring import Keyring, key_id


def test_create_writes_0600_keys_and_never_overwrites(tmp_path):
    keys = tmp_path / "keys"
    Keyring.create(keys, keys / "master.key")
    for f in keys.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600
    before = (keys / "master.key").read_bytes()
    Keyring.create(keys, keys / "master.key")
    assert (keys / "master.key").read_bytes() == before
    ring = Keyring(keys, keys / "master.key", env={})
    assert len(ring.master_key()) == 32
    assert ring.secret("pseudonym") != ring.secret("audit")


def test_env_master_key_overrides_file(tmp_path):
    keys = tmp_path / "keys"
    Keyring.create(keys, keys / "master.key")
    other = os.urandom(32)
    ring = Keyring(keys, keys / "master.key", env={"MEDSEARCH_MASTER_KEY": base64.b64encode(other).decode()})
    assert ring.master_key() == other and ring.master_key_id() == key_id(other)


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.chmod(0o644), "chmod 600"),
    (lambda p: p.write_text("not base64!!"), "not valid base64"),
    (lambda p: p.write_text(base64.b64encode(b"short").decode()), "32 are required"),
])
def test_damaged_master_key_names_the_fix(tmp_path, damage, fragment):
    keys = tmp_path / "keys"
    Keyring.create(keys, keys / "master.key")
    path = keys / "master.key"
    if path.exists() and fragment != "chmod 600":
        path.chmod(0o600)
    damage(path)
    if path.exists() and fragment != "chmod 600":
        path.chmod(0o600)
    with pytest.raises(KeyringError, match=fragment) as err:
        Keyring(keys, path, env={}).master_key()
    assert err.value.fix
