"""Deterministic, class-stratified splits of groups of images (a group never straddles two splits)."""

import numpy as np


def group_split(y: np.ndarray, groups: np.ndarray, *, seed: int, val_fraction: float,
                test_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) index arrays, each sorted, together covering 0..N-1 exactly once.

    Steps:
      1. Each group takes the majority label of its images (ties -> smallest label).
      2. Per class, in class order, shuffle that class's groups with one numpy Generator seeded by
         `seed` (so the whole split is a function of the seed and the data).
      3. Walk the shuffled groups keeping a running image count; a group goes to test while the
         midpoint of its count interval is below test_fraction * n_class, then to val up to
         (test_fraction + val_fraction) * n_class, and the rest to train. The midpoint rule rounds to
         the nearest group instead of always overshooting by one.
    Pass groups = arange(N) for a plain stratified split of single images.
    """
    _, gid, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    n_groups = len(sizes)
    # majority label per group: count (group, label) pairs and take the argmax over labels
    counts = np.zeros((n_groups, int(y.max()) + 1), dtype=np.int64)
    np.add.at(counts, (gid, y), 1)
    group_label = counts.argmax(1)

    rng = np.random.default_rng(seed)
    split_of_group = np.zeros(n_groups, dtype=np.int8)  # 0 train, 1 val, 2 test
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        s = sizes[members]
        n_c = s.sum()
        mid = np.cumsum(s) - s / 2.0
        split_of_group[members[mid < (test_fraction + val_fraction) * n_c]] = 1
        split_of_group[members[mid < test_fraction * n_c]] = 2
    where = split_of_group[gid]
    return tuple(np.flatnonzero(where == k) for k in (0, 1, 2))


def subsample(idx: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of idx, picked by seed and kept in order (the cap for fast runs)."""
    if limit is None or limit >= len(idx):
        return idx
    # a seed stream of its own, so the cap never changes which images land in val/test
    pick = np.random.default_rng((seed, 1)).choice(len(idx), size=limit, replace=False)
    return idx[np.sort(pick)]
