import os

import numpy as np
import pytest

from medsearch.errors import IntegrityError, KeyringError
from medsearch.index import crypto
from medsearch.index.faiss_backend import FaissIndex

KEY = os.urandom(32)


def marker_index(path, key=KEY, kind="flat"):
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(300, 24)).astype(np.float32)
    # a marker vector whose float32 bytes are easy to look for in the file
    vecs[17] = np.float32(1234.5678)
    index = FaissIndex(kind=kind, path=path, master_key=lambda: key)
    index.add(np.arange(300) + 1000, vecs)
    index.save()
    return index, vecs


def test_roundtrip_is_encrypted_at_rest(tmp_path):
    path = tmp_path / "v.msidx"
    index, vecs = marker_index(path)
    raw = path.read_bytes()
    plain = index.to_bytes()
    assert vecs[17].tobytes() in plain  # the marker is in the serialised index...
    assert vecs[17].tobytes()[:8] not in raw  # ...and not in the file on disk
    assert vecs[3].tobytes()[:8] not in raw
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = FaissIndex(path=path, master_key=lambda: KEY)
    again.load()
    assert np.array_equal(again.ids(), index.ids())
    np.testing.assert_array_equal(again.vectors([1017])[0], vecs[17])
    assert not list(tmp_path.glob("*.tmp"))


def test_chunked_file_roundtrips(tmp_path):
    payload = os.urandom(10_000)
    crypto.seal(tmp_path / "f", KEY, payload, chunk_bytes=1024)
    assert bytes(crypto.unseal(tmp_path / "f", KEY)) == payload


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["body", "last byte", "header", "magic"])
def test_tampering_fails_closed(tmp_path, where):
    path = tmp_path / "v.msidx"
    marker_index(path)
    header_end = crypto.read_header(path)["_offset"]
    offset = {"body": header_end + 100, "last byte": path.stat().st_size - 1, "header": header_end - 3,
              "magic": 0}[where]
    _flip(path, offset)
    with pytest.raises(IntegrityError) as err:
        FaissIndex(path=path, master_key=lambda: KEY).load()
    assert "medsearch doctor" in err.value.fix and "medsearch index rebuild" in err.value.fix


@pytest.mark.parametrize("cut", ["truncate", "drop last chunk", "swap chunks"])
def test_truncation_and_reordering_fail_closed(tmp_path, cut):
    path = tmp_path / "f"
    crypto.seal(path, KEY, os.urandom(4000), chunk_bytes=1000)
    start = crypto.read_header(path)["_offset"]
    data = path.read_bytes()
    step = 1000 + crypto.TAG_BYTES
    body = data[start:]
    chunks = [body[i:i + step] for i in range(0, len(body), step)]
    if cut == "truncate":
        data = data[:-10]
    elif cut == "drop last chunk":
        data = data[:start] + b"".join(chunks[:-1])
    else:
        data = data[:start] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    path.write_bytes(data)
    with pytest.raises(IntegrityError):
        crypto.unseal(path, KEY)


def test_wrong_master_key_names_the_fix(tmp_path):
    path = tmp_path / "v.msidx"
    marker_index(path)
    with pytest.raises(KeyringError) as err:
        FaissIndex(path=path, master_key=lambda: os.urandom(32)).load()
    assert "master key id" in err.value.problem
    assert "medsearch index rebuild" in err.value.fix


def test_not_an_index_file(tmp_path):
    path = tmp_path / "v.msidx"
    path.write_bytes(b"hello world, not an index")
    with pytest.raises(IntegrityError):
        FaissIndex(path=path, master_key=lambda: KEY).load()
