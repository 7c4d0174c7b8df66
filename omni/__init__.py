"""TinyOmni: the shared package behind the five stage scripts."""
