"""phi4ray: the Phi-4 training recipe as an elastic Ray system.

The library is plain Python/torch and imports without starting Ray; `actors/` puts its pieces on
Ray and `jobs/` holds one thin entrypoint per stage.
"""
__version__ = "0.1.0"
