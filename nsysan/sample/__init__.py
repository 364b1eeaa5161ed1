"""A small real sweep shipped with nsysan: nsys 2025.3 exports of a ViT inference pipeline on one H100.

Five configurations (vit0x0x0, vit32x2x128, vit32x6x512 pinned and pageable, vit16x12x1024), 5 warm-up
and 30 measured batches each; trimmed of tables nsysan does not read. See docs/sample.md.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_dir() -> Path:
    return Path(str(resources.files(__package__)))


def sample_paths() -> list[Path]:
    return sorted(sample_dir().glob("*.sqlite"))
