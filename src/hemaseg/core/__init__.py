"""Numpy-only pieces every task uses: the result type, label tools, one resize policy."""
