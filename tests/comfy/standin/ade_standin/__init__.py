"""Stand-in of what AnimateDiff-Evolved 1.5.6 puts on and runs around a MODEL (see README)."""
