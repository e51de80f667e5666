"""Analysis and plots over run artifacts."""
