"""Evaluation: the internalized adapter side by side with the prompted and unprompted base model."""
