"""The CLIP4STR network: decoders, permutations and the full model (plain PyTorch)."""
