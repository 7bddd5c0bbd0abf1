"""``python -m camcli``."""

from camcli.cli import main

main()
