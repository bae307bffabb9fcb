"""The mHC kernels' shape arithmetic, without tilelang: `_kernels_mhc` builds its kernels with
it, and the wrappers, `scripts/tilelang_keys.py` and the CPU tests choose widths and split
counts with the same functions (one rule, not copies that could drift)."""


def vec_for(h: int, cap: int) -> int:
    """The widest power of two up to `cap` dividing the hidden size `h`: a thread's vector."""
    v = cap
    while v > 1 and h % v:
        v //= 2
    return v


def ceildiv(a: int, b: int) -> int:
    return -(-a // b)


def fma_splits(hc: int, H: int, threads: int = 128) -> int:
    """Split count of `fma_partials`: one split per (stream, threads*vec hidden elements)."""
    return hc * ceildiv(H, threads * vec_for(H, 4))
