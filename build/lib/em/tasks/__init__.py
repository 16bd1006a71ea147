"""Task layer: the only code that reads Hydra configs; it turns them into typed arguments."""
