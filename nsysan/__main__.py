"""``python -m nsysan``: the ``nsysan`` command."""
from nsysan.cli import main

main()
