"""The Storage SCP against real peers: dcmtk's echoscu/storescu and a pynetdicom SCU."""

from __future__ import annotations

import datetime as dt
import os
import ssl

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification
from sqlalchemy import select

from medsearch.store.models import IngestJob

from .conftest import assert_no_phi, dcmtk, run_tool, wait_for

pytestmark = pytest.mark.filterwarnings("error")


def _jobs(inst):
    with inst.sessions() as s:
        return s.execute(select(IngestJob.spool_path, IngestJob.source, IngestJob.status)).all()


def test_echoscu_gets_success(make_receiver):
    receiver, _ = make_receiver()
    result = run_tool(dcmtk("echoscu"), "-aet", "PACS1", "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert result.returncode == 0, result.stderr


def test_storescu_series_is_spooled_durably_and_queued_after_the_quiet_period(make_receiver, series_factory,
                                                                               pacs_log):
    receiver, inst = make_receiver(quiet_seconds=2.0)
    paths = series_factory(n=5)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    uids.append(str(pydicom.dcmread(paths[0]).SeriesInstanceUID))
    result = run_tool(dcmtk("storescu"), "-aet", "PACS1", "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *paths)
    assert result.returncode == 0, result.stderr
    # Acknowledged means on disk, before the series is complete.
    incoming = list((inst.spool_dir / "incoming").rglob("*.dcm"))
    assert len(incoming) == 5
    assert not _jobs(inst), "queued before the quiet period ended"
    jobs = wait_for(lambda: _jobs(inst), timeout=10, what="the series to be queued")
    assert len(jobs) == 1 and jobs[0].source == "scp" and jobs[0].status == "queued"
    spooled = receiver.spool.files(jobs[0].spool_path)
    assert len(spooled) == 5
    # Bytes are kept as received, and names carry no source UID.
    sent = sorted(p.read_bytes()[132:] for p in paths)
    got = sorted(p.read_bytes()[132:] for p in spooled)
    assert [len(g) > 0 for g in got] == [True] * 5
    assert {pydicom.dcmread(p).SOPInstanceUID for p in spooled} == set(uids[:5])
    assert len(sent) == len(got)
    names = " ".join(str(p.relative_to(inst.spool_dir)) for p in inst.spool_dir.rglob("*"))
    assert_no_phi(names + jobs[0].spool_path, uids)
    assert_no_phi(pacs_log.text, uids)
    assert oct(spooled[0].stat().st_mode & 0o777) == "0o600"


def test_resent_instance_is_not_duplicated_in_the_spool(make_receiver, series_factory):
    receiver, inst = make_receiver(quiet_seconds=30)
    paths = series_factory(n=3)
    for _ in range(2):
        result = run_tool(dcmtk("storescu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *paths)
        assert result.returncode == 0, result.stderr
    assert len(list(inst.spool_dir.rglob("*.dcm"))) == 3  # incoming or already sealed


@pytest.mark.parametrize("allowed, caller, accepted", [
    (["PACS1"], "PACS1", True),
    (["PACS1"], "INTRUDER", False),
    (["PACS1@127.0.0.1"], "PACS1", True),
    (["PACS1@10.9.9.9"], "PACS1", False),  # right AE title, wrong host
    (["PACS1@10.9.9.9", "PACS1@127.0.0.1"], "PACS1", True),
    ([], "ANYONE", True),
])
def test_calling_ae_policy(make_receiver, pacs_log, allowed, caller, accepted):
    receiver, _ = make_receiver({"scp_allowed_callers": allowed})
    result = run_tool(dcmtk("echoscu"), "-aet", caller, "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert (result.returncode == 0) is accepted, result.stderr
    if not accepted:
        assert "Association Rejected" in result.stderr
        assert "Calling AE Title Not Recognized" in result.stderr
        assert f"{caller}@127.0.0.1 rejected" in pacs_log.text


def test_rejection_is_a_permanent_association_reject(make_receiver):
    receiver, _ = make_receiver({"scp_allowed_callers": ["PACS1"]})
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDSEARCH")
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source,
            assoc.acceptor.primitive.diagnostic) == (0x01, 0x01, 0x03)


@pytest.mark.parametrize("entry", ["", "WAY_TOO_LONG_AE_TITLE", "BAD\\AE", "PACS@no-such-host.invalid"])
def test_bad_caller_entries_stop_start_up_with_a_fix(make_receiver, entry):
    from medsearch.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_receiver({"scp_allowed_callers": [entry]})
    assert "scp_allowed_callers" in err.value.problem and err.value.fix


def test_unsupported_sop_class_gets_its_presentation_context_rejected(make_receiver, tmp_path, pacs_log):
    receiver, inst = make_receiver()
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDSEARCH")
    assert assoc.is_established
    rejected = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert rejected == {SecondaryCaptureImageStorage: 0x03}  # abstract syntax not supported
    assert accepted == {CTImageStorage}
    assert "SecondaryCaptureImageStorage" in pacs_log.text or "Secondary Capture" in pacs_log.text
    assert not list(inst.spool_dir.rglob("*.dcm"))


def test_storescu_with_an_unsupported_sop_class_stores_nothing(make_receiver, series_factory):
    receiver, inst = make_receiver()
    path = series_factory(n=1)[0]
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.save_as(path)
    result = run_tool(dcmtk("storescu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, path)
    assert result.returncode != 0
    assert "No presentation context" in result.stderr or "no presentation context" in result.stderr.lower()
    assert not list(inst.spool_dir.rglob("*.dcm"))


def _garbage(path):
    ds = pydicom.dcmread(path)
    meta_end = path.read_bytes().index(b"\x08\x00")  # first dataset element follows the file meta
    raw = path.read_bytes()
    path.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + os.urandom(64))
    return ds


def _drop(tag):
    def edit(path):
        ds = pydicom.dcmread(path)
        del ds[tag]
        ds.save_as(path)
        return ds
    return edit


@pytest.mark.parametrize("corrupt, status", [
    (_garbage, 0xC000),
    (_drop("SeriesInstanceUID"), 0xA900),
    (_drop("PixelData"), 0xA900),
])
def test_malformed_data_gets_a_failure_status_and_is_not_spooled(make_receiver, series_factory, monkeypatch,
                                                                  pacs_log, corrupt, status):
    receiver, inst = make_receiver()
    path = series_factory(n=1)[0]
    original = pydicom.dcmread(path)
    corrupt(path)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDSEARCH")
    assert assoc.is_established
    rsp = assoc.send_c_store(path)
    assoc.release()
    assert rsp.Status == status
    assert not list(inst.spool_dir.rglob("*.dcm"))
    assert f"status 0x{status:04X}" in pacs_log.text
    assert_no_phi(pacs_log.text, [original.SOPInstanceUID, original.StudyInstanceUID])


def _recode(ts):
    def convert(path):
        ds = pydicom.dcmread(path)
        if ts.is_compressed:
            ds.compress(ts)
        else:
            ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(path, enforce_file_format=True)
    return convert


@pytest.mark.parametrize("ts_name, flag", [
    ("RLELossless", "-xr"),
    ("JPEG2000Lossless", "-xv"),
    ("DeflatedExplicitVRLittleEndian", "-xd"),
    ("ImplicitVRLittleEndian", "-xi"),
])
def test_transfer_syntaxes_are_accepted_and_spooled_as_received(make_receiver, series_factory, ts_name, flag):
    ts = getattr(pydicom.uid, ts_name)
    receiver, inst = make_receiver()
    paths = series_factory(n=2, size=64)  # JPEG 2000 needs more than 32 pixels for its resolution levels
    for p in paths:
        _recode(ts)(p)
    result = run_tool(dcmtk("storescu"), flag, "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *paths)
    assert result.returncode == 0, result.stderr
    spooled = list(inst.spool_dir.rglob("*.dcm"))
    assert len(spooled) == 2
    for p in spooled:
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ts
        assert ds.pixel_array.shape == (64, 64)


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medsearch-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(
                "127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "scp.crt", tmp_path / "scp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_only_when_configured(make_receiver, tmp_path, series_factory):
    cert, key = _self_signed(tmp_path)
    receiver, inst = make_receiver({"scp_tls_cert": str(cert), "scp_tls_key": str(key)})
    client = ssl.create_default_context(cafile=str(cert))
    ae = AE(ae_title="PACS1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="MEDSEARCH", tls_args=(client, "127.0.0.1"))
    assert assoc.is_established
    rsp = assoc.send_c_store(series_factory(n=1)[0])
    assoc.release()
    assert rsp.Status == 0x0000
    # dcmtk over TLS, verifying the SCP's certificate
    echo = run_tool(dcmtk("echoscu"), "+tla", "+cf", cert, "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert echo.returncode == 0, echo.stderr
    store = run_tool(dcmtk("storescu"), "+tla", "+cf", cert, "-aec", "MEDSEARCH", "127.0.0.1", receiver.port,
                     *series_factory(n=2))
    assert store.returncode == 0, store.stderr
    assert len(list(inst.spool_dir.rglob("*.dcm"))) == 3  # incoming or already sealed
    plain = run_tool(dcmtk("echoscu"), "-to", "5", "-ta", "5", "-aec", "MEDSEARCH", "127.0.0.1", receiver.port)
    assert plain.returncode != 0  # a plain-TCP peer cannot talk to a TLS-only SCP


def _ca_signed(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, key, cert):
        (tmp_path / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return tmp_path / f"{stem}.crt", tmp_path / f"{stem}.key"

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": write("ca", ca_key, ca)}
    for stem, usage, san in (("server", ExtendedKeyUsageOID.SERVER_AUTH, "127.0.0.1"),
                             ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(f"medsearch {stem}")).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
                                            critical=False)
        out[stem] = write(stem, key, builder.sign(ca_key, hashes.SHA256()))
    return out


def test_tls_with_client_certificates_refuses_senders_without_one(make_receiver, tmp_path):
    pki = _ca_signed(tmp_path)
    (server_crt, server_key), (client_crt, client_key), (ca_crt, _) = pki["server"], pki["client"], pki["ca"]
    receiver, _ = make_receiver({"scp_tls_cert": str(server_crt), "scp_tls_key": str(server_key),
                                 "scp_tls_ca": str(ca_crt)})
    with_cert = run_tool(dcmtk("echoscu"), "+tls", client_key, client_crt, "+cf", ca_crt, "-aec", "MEDSEARCH",
                         "127.0.0.1", receiver.port)
    assert with_cert.returncode == 0, with_cert.stderr
    without = run_tool(dcmtk("echoscu"), "+tla", "+cf", ca_crt, "-to", "5", "-aec", "MEDSEARCH", "127.0.0.1",
                       receiver.port)
    assert without.returncode != 0


def test_half_configured_tls_is_a_config_error(make_receiver, tmp_path):
    from medsearch.errors import ConfigError

    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match="scp_tls_cert and scp_tls_key"):
        make_receiver({"scp_tls_cert": str(cert)})


def test_second_receiver_on_the_same_spool_is_refused(make_receiver):
    from medsearch.errors import StorageError
    from medsearch.pacs.scp import Receiver

    receiver, inst = make_receiver()
    with pytest.raises(StorageError, match="Another Storage SCP"):
        Receiver(inst, port=0, host="127.0.0.1").start()


def test_a_restarted_scp_seals_what_a_crash_left_in_incoming(make_receiver, series_factory):
    from medsearch.pacs.scp import Receiver

    receiver, inst = make_receiver(quiet_seconds=3600)
    sent = run_tool(dcmtk("storescu"), "-aec", "MEDSEARCH", "127.0.0.1", receiver.port, *series_factory(n=3))
    assert sent.returncode == 0
    receiver.stop()  # like a crash: nothing was sealed
    (inst.spool_dir / "tmp" / "deadbeef.part").write_bytes(b"half an instance")  # never acknowledged
    with Receiver(inst, port=0, host="127.0.0.1", quiet_seconds=0.3):
        assert not (inst.spool_dir / "tmp" / "deadbeef.part").exists()
        jobs = wait_for(lambda: _jobs(inst), timeout=10, what="the left-over series to be queued")
    assert len(jobs) == 1 and len(receiver.spool.files(jobs[0].spool_path)) == 3
