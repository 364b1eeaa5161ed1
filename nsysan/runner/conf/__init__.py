"""Hydra configs of ``nsysan run`` (package data): config.yaml, and the groups experiment/, hardware/, test/ (ViT),
ddp/ and partition/ (distributed kinds' defaults) and on_hardware/ (an experiment's settings on one hardware)."""
