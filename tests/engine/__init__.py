"""Tests of the refinement engine: model loading, generation, extraction, strategies, CLI."""
