"""``python -m lgm.cli ARGS`` runs ``lgm-flow ARGS``."""

from lgm.cli.main import main

main()
