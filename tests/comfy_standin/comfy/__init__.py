"""A minimal stand-in for ComfyUI's ``comfy`` package (tests only): just what a SAMPLER's call path touches."""
