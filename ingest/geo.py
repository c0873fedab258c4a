"""WGS84 latitude/longitude <-> local tangent plane (east/north metres) around an origin.

Exact ECEF-based conversion, vectorised over numpy arrays; good to millimetres over the
tens of kilometres a drive covers. Heights are taken as the origin's height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_A = 6378137.0  # WGS84 semi-major axis, m
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)


def _ecef(lat_deg: np.ndarray, lon_deg: np.ndarray, h: float) -> np.ndarray:
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    n = _A / np.sqrt(1 - _E2 * np.sin(lat) ** 2)
    return np.stack(
        [
            (n + h) * np.cos(lat) * np.cos(lon),
            (n + h) * np.cos(lat) * np.sin(lon),
            (n * (1 - _E2) + h) * np.sin(lat),
        ]
    )


@dataclass(frozen=True, kw_only=True)
class LocalFrame:
    """A local ENU frame: x east, y north, metres from (lat0, lon0)."""

    lat0: float
    lon0: float
    h0: float = 0.0

    def __post_init__(self) -> None:
        if not (-90 < self.lat0 < 90 and -180 <= self.lon0 <= 180):
            raise ValueError(f"origin ({self.lat0}, {self.lon0}) is not a valid lat/lon")

    def _rotation(self) -> np.ndarray:
        lat, lon = np.radians(self.lat0), np.radians(self.lon0)
        sl, cl, so, co = np.sin(lat), np.cos(lat), np.sin(lon), np.cos(lon)
        return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])

    def to_local(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x east, y north) metres of each fix."""
        origin = _ecef(np.array(self.lat0), np.array(self.lon0), self.h0)
        d = _ecef(np.asarray(lat, float), np.asarray(lon, float), self.h0) - origin[:, None]
        enu = self._rotation() @ d
        return enu[0], enu[1]

    def to_geodetic(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lat, lon) degrees of local points at the origin's height (Bowring, 2 iterations)."""
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        # Up component that keeps the point on the origin-height ellipsoid, to first order.
        r = _A + self.h0
        up = -(x**2 + y**2) / (2 * r)
        enu = np.stack([x, y, up])
        ecef = (
            self._rotation().T @ enu
            + _ecef(np.array(self.lat0), np.array(self.lon0), self.h0)[:, None]
        )
        px, py, pz = ecef
        lon = np.arctan2(py, px)
        p = np.hypot(px, py)
        lat = np.arctan2(pz, p * (1 - _E2))
        for _ in range(3):
            n = _A / np.sqrt(1 - _E2 * np.sin(lat) ** 2)
            h = p / np.cos(lat) - n
            lat = np.arctan2(pz, p * (1 - _E2 * n / (n + h)))
        return np.degrees(lat), np.degrees(lon)
