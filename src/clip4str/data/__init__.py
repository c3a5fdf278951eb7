"""Datasets, label rules, transforms, augmentation and the synthetic word renderer."""
