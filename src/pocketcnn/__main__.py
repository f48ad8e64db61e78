"""``python -m pocketcnn ...`` (what torchrun launches) is the CLI."""
from pocketcnn.cli import main

main()
