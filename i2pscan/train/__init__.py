"""Making a detector: labelled samples (samples), the toy sample (toydata), augmentations (augment),
tapped features (features), which layers matter (calibrate), which weights may move
(sensitivity), the loop, checkpoints and thresholds, and finetune, which orchestrates them."""
