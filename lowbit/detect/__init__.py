"""Stage 1: anomaly maps on whole images from a quantized trunk's integer codes (no torch)."""
