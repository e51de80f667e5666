"""Small shared helpers: atomic file I/O, tensor files, hashing, device names, state-dict comparison."""
