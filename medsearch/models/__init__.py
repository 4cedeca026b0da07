"""The dual-tower model: a MONAI 3D image tower and a MiniLM text tower in one
embedding space, with attribute heads (issue 6).

Entry point for other areas: :func:`medsearch.models.registry.get_encoder`.
"""
