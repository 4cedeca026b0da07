"""medsearch: on-premise, privacy-preserving search for CT archives."""
__version__ = "0.1.0"
