"""The embedded offline demo."""
