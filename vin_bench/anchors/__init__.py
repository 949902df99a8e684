"""Reference kernels the project's own kernels are measured against (compiled, not shipped)."""
