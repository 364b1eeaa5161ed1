"""Hydra configs of ``nsysan run`` (package data): config.yaml, and the groups experiment/, hardware/ and test/."""
