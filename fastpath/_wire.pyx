# cython: language_level=3
# Placeholder while the hot path is written: importing it fails, so load_codec() uses the twin.
raise ImportError("tensorwire.fastpath._wire: the Cython codec is not implemented yet")
