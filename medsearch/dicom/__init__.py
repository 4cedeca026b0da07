"""DICOM ingest and de-identification (PS3.15 Annex E), keyed pseudonyms, the encrypted vault,
and HU volume assembly.  Nothing here is imported at package import time."""
