"""``python -m ocrpress``."""

from .cli import main

main()
