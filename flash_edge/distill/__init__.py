"""The SD3.5-Flash distillation recipe at a scale this machine can train."""
