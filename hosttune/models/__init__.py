"""Huge-page model store (store.py), its trailer format (trailer.py) and the LD_PRELOAD shim
(shim/, built by shim.py)."""
