"""``python -m initsweep`` runs the CLI."""

from .cli import main

main()
