"""``python -m nsysan.runner experiment=quick_test ...``: the same as ``nsysan run ...``."""
from nsysan.runner.command import main

main()
