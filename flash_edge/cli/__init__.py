"""Command-line entry points: flash-export, flash-generate (and flash-bench when it lands)."""
