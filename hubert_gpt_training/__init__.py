"""Training helpers for hubert-gpt (never imported by modeling_hubert_gpt/)."""
