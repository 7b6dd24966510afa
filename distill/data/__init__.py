"""The data stage: load, clean (with a report), split, few-shot, augment."""
