"""The command-line layer: one thin module per command; the work is in the pipeline."""
