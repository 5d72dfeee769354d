"""``python -m rvq_cli ...`` runs the rvq command (used by torchrun / accelerate launch)."""

from .cli import main

main()
