#!/usr/bin/env python3
"""Reference values for src/binom.c (tests/test_binom.c reads tests/data/binom/golden.tsv).

Independent of the C code's method (a continued fraction): for integer a, b the regularized incomplete beta
is a binomial tail, I_x(a, b) = P(X >= a) for X ~ Binomial(a + b - 1, x), summed here term by term in
60-digit decimal arithmetic; the Clopper-Pearson bounds are found by bisection on those exact tails
(lo: P(X >= k | n, p) = alpha/2, hi: P(X <= k | n, p) = alpha/2). No scipy/mpmath needed.
Run: python3 tests/golden/make_binom_golden.py > tests/data/binom/golden.tsv  (takes about a minute)."""
from decimal import Decimal, getcontext
from math import comb

getcontext().prec = 60


def tail_ge(a, n, x):
    """P(X >= a), X ~ Binomial(n, x), x a Decimal."""
    if a <= 0:
        return Decimal(1)
    if a > n:
        return Decimal(0)
    y = 1 - x
    # sum the shorter side
    if a > n // 2:
        return sum(Decimal(comb(n, i)) * x**i * y ** (n - i) for i in range(a, n + 1))
    return 1 - sum(Decimal(comb(n, i)) * x**i * y ** (n - i) for i in range(0, a))


def beta_inc(a, b, x):
    return tail_ge(a, a + b - 1, x)


def bisect(f, target, increasing):
    lo, hi = Decimal(0), Decimal(1)
    for _ in range(120):
        mid = (lo + hi) / 2
        v = f(mid)
        if (v < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def cp(k, n, conf=Decimal("0.95")):
    alpha = 1 - conf
    lo = Decimal(0) if k == 0 else bisect(lambda p: tail_ge(k, n, p), alpha / 2, True)
    hi = Decimal(1) if k == n else bisect(lambda p: 1 - tail_ge(k + 1, n, p), alpha / 2, False)
    return lo, hi


def fmt(v):
    return "0" if v == 0 else f"{v:.17e}"


def main():
    print("# kind\targs...\tvalue(s)  (make_binom_golden.py; exact binomial tails, 60 digits)")
    for a, b, x in [(1, 1, "0.3"), (2, 3, "0.4"), (5, 5, "0.5"), (10, 3, "0.9"), (3, 10, "0.05"), (1, 100, "0.01"),
                    (100, 1, "0.99"), (50, 60, "0.45"), (7, 2000, "0.002"), (300, 200, "0.61"), (1, 1000, "0.0001"),
                    (1000, 1, "0.9995"), (20, 20, "0.3"), (20, 20, "0.7")]:
        print(f"beta_inc\t{a}\t{b}\t{x}\t{fmt(beta_inc(a, b, Decimal(x)))}")
    for k, n in [(0, 1), (1, 1), (0, 10), (1, 10), (5, 10), (10, 10), (0, 100), (3, 100), (50, 100), (0, 346),
                 (1, 346), (123, 158), (505, 632), (537, 632), (0, 1038), (3, 1038), (1, 1000), (999, 1000),
                 (0, 2075), (7, 2075)]:
        lo, hi = cp(k, n)
        print(f"cp95\t{k}\t{n}\t{fmt(lo)}\t{fmt(hi)}")


if __name__ == "__main__":
    main()
