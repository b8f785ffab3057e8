"""Per-feature running statistics: count, mean and M2 (sum of squared deviations)
in float64, computed per write unit and merged exactly with Chan et al.'s formula.
Merging in a fixed order (shard order) makes the result independent of which
process or which run computed each part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Moments"]


@dataclass(frozen=True)
class Moments:
    count: int
    mean: np.ndarray  # float64 (*feature)
    m2: np.ndarray  # float64 (*feature)

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of ``x`` (sample, *feature)."""
        if len(x) == 0:
            return cls.empty(np.shape(x)[1:])
        d = np.array(x, dtype=np.float64)  # one float64 copy, centred in place
        mean = d.mean(axis=0)
        d -= mean
        flat = d.reshape(len(d), -1)
        return cls(len(d), mean, np.einsum("ij,ij->j", flat, flat).reshape(mean.shape))

    @classmethod
    def empty(cls, feature_shape: tuple[int, ...]) -> Moments:
        return cls(0, np.zeros(feature_shape), np.zeros(feature_shape))

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        if n == 0:
            return self
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def var(self) -> np.ndarray:
        """Population variance (divides by count)."""
        return self.m2 / max(self.count, 1)

    def pack(self) -> np.ndarray:
        """[count, mean..., m2...] as one float64 vector."""
        return np.concatenate([[float(self.count)], self.mean.ravel(), self.m2.ravel()])

    @classmethod
    def unpack(cls, v: np.ndarray, feature_shape: tuple[int, ...]) -> Moments:
        f = int(np.prod(feature_shape))
        return cls(
            int(v[0]),
            v[1 : 1 + f].reshape(feature_shape),
            v[1 + f : 1 + 2 * f].reshape(feature_shape),
        )
