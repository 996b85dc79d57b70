"""Deterministic synthetic data: `exports` writes export folders in SPEC.md's reference
shapes (`export generate`), `inputs` writes device-readings and test-records input files
(`readings generate`, `records generate`)."""
