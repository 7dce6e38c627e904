"""A small DDPM on 16x16 digits, written as a third party would (see model.py and train.py)."""
