"""Importers that turn a licensed SNOMED CT release or a RadLex export into a
terminology layer (a TOML file in the format of ``terminology/``)."""
