"""The unbiased pass@k estimator (Chen et al. 2021; reference section 7).

For a problem with ``n`` samples of which ``c`` pass, pass@k = 1 - C(n-c, k) / C(n, k), the
probability that k samples drawn without replacement include a passing one; with n - c < k it
is 1. The product form 1 - prod_{i=n-c+1}^{n} (1 - k/i) avoids huge binomials.
"""

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem. Requires 0 <= c <= n and 1 <= k <= n."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(counts, k: int) -> float:
    """Mean pass@k over problems given as ``[(n, c), ...]``."""
    counts = list(counts)
    if not counts:
        raise ValueError("no problems to score")
    return float(np.mean([pass_at_k(n, c, k) for n, c in counts]))


def applicable_ks(counts, ks=(1, 10, 100)) -> list:
    """The ks that every problem has enough samples for (k <= n for all problems)."""
    smallest = min(n for n, _ in counts)
    return [k for k in ks if k <= smallest]
