"""PACS integration: the DIMSE Storage SCP, the spool, the ingest queue and worker, DICOMweb pull.

Data path: a peer's C-STORE (or a pulled study) is written durably to the spool
(:mod:`medsearch.pacs.spool`), a quiet series is sealed and queued as an
``IngestJob`` (:mod:`medsearch.pacs.queue`), and the worker
(:mod:`medsearch.pacs.worker`) hands the sealed folder to
``medsearch.dicom.ingest.ingest_paths``.
"""
