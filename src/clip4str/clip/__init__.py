"""CLIP towers, weight-file readers and the BPE tokenizer, written for clip4str."""
