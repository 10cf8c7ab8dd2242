"""Small internals shared by every part (credential redaction first)."""
