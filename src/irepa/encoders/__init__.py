"""The vision-encoder zoo: frozen teachers with exact preprocessing and offline-first weights."""
