"""Models: where they run (device), their weights (weights), the backbone and its taps (backbone),
the heads (head, published), sparse deltas (sparse), detector files (tensorfile, schema,
detector_file), the Detector built from one (detector), and the one place a logit is computed
(inference)."""
