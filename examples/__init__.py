"""Example models written as users write them (importable from the repository root: ``examples.ddpm_digits``)."""
