"""Heuristic TC / AR detection, as threshold-based schemes in the field do it: the baseline for segmentation.

Atmospheric rivers (after Rutz et al. 2014 and Guan & Waliser 2015): cells where integrated vapour
transport exceeds a threshold (absolute, and/or a percentile of its latitude row), grouped into
connected regions (periodic in longitude), kept when a region lies outside the deep tropics, is at
least ``ar_min_length_km`` long (largest great-circle distance between its cells) and elongated
(length / width >= ``ar_min_aspect``, width = area / length). Integrated vapour transport is
approximated by ``TMQ * |wind at 850 hPa|`` [kg m-1 s-1] (the files carry no humidity profile), or TMQ
itself [kg m-2] can be thresholded.

Tropical cyclones (in the spirit of TECA / Vitart et al. 1997): local minima of sea-level pressure
(lowest within ``tc_search_radius_km``) inside a latitude band, at least ``tc_min_depth_hpa`` below the
mean PSL of the surrounding ring, with mean low-level relative vorticity of the hemisphere's cyclonic
sign (positive north, negative south) above ``tc_min_vorticity`` within ``tc_vorticity_radius_km``;
optionally a warm core. Each detection is labelled as a disk of radius ``tc_radius_km``; TC wins
over AR where both apply. Distances are great-circle distances from the dataset's lat / lon, so any
grid size works.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from climateml.data.io import FLAG_ATTRS

EARTH_RADIUS_KM = 6371.0
BACKGROUND, TC, AR = 0, 1, 2


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Haversine distance [km] between points given in degrees (broadcasting)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dphi, dlmb = p2 - p1, np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def cell_area_km2(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Area [km2] of each cell of a regular lat-lon grid, (lat, lon); cells at the poles are half cells."""
    lat = np.asarray(lat, float)
    edges = np.concatenate([[lat[0]], 0.5 * (lat[1:] + lat[:-1]), [lat[-1]]]) if lat.size > 1 else lat
    band = np.abs(np.sin(np.deg2rad(edges[1:])) - np.sin(np.deg2rad(edges[:-1]))) if lat.size > 1 else np.ones(1)
    dlon = np.deg2rad(360.0 / lon.size)
    return np.repeat((EARTH_RADIUS_KM ** 2 * band * dlon)[:, None], lon.size, axis=1)


def relative_vorticity(u: np.ndarray, v: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Relative vorticity [s-1] of winds [m s-1] on (..., lat, lon), centred differences, periodic in lon.

    zeta = (dv/dlambda) / (a cos phi) - (du/dphi) / a + u tan(phi) / a.
    """
    a = EARTH_RADIUS_KM * 1000.0
    phi = np.deg2rad(lat)[:, None]
    cos = np.maximum(np.cos(phi), 1e-3)
    dlmb = np.deg2rad(360.0 / lon.size)
    dv_dlmb = (np.roll(v, -1, axis=-1) - np.roll(v, 1, axis=-1)) / (2.0 * dlmb)
    du_dphi = np.gradient(u, np.deg2rad(lat), axis=-2)
    return dv_dlmb / (a * cos) - du_dphi / a + u * np.tan(phi) / a * (cos > 1e-3)


def _label_periodic(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components of a (lat, lon) mask, joining regions across the lon = 0 / 360 seam."""
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return labels, 0
    parent = np.arange(n + 1)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first, last = labels[:, 0], labels[:, -1]
    shifts = (-1, 0, 1) if connectivity == 8 else (0,)
    for s in shifts:  # a cell in the last column touches the first-column cells in rows j-1, j, j+1
        lo, hi = max(0, -s), labels.shape[0] - max(0, s)
        a, b = last[lo:hi], first[lo + s:hi + s]
        for i, j in zip(a[(a > 0) & (b > 0)], b[(a > 0) & (b > 0)]):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n + 1)])
    _, compact = np.unique(roots, return_inverse=True)
    return compact[labels], int(compact.max())


class HeuristicDetector:
    """Threshold-based TC and AR detector; ``predict(ds)`` returns labels 0 / 1 / 2 on ds's (time, lat, lon).

    AR arguments:
        ar_field: ``"ivt"`` (TMQ x |wind| proxy, kg m-1 s-1) or ``"tmq"`` (kg m-2).
        ar_wind: names of the (u, v) winds used for the IVT proxy [m s-1].
        ar_threshold: absolute threshold in the units of ``ar_field``; None to use only the percentile.
        ar_percentile: a cell must also exceed this percentile (0-100) of its latitude row in the same
            snapshot; None to use only the absolute threshold.
        ar_min_length_km: minimum length [km] of a region (largest distance between two of its cells).
        ar_min_aspect: minimum length / width, width = area / length [dimensionless].
        ar_lat_range: (min, max) absolute latitude [deg] where AR cells may be; the lower bound keeps the
            moist deep tropics out.
        ar_min_poleward_ivt: minimum region-mean poleward moisture transport sign(lat) TMQ v [kg m-1 s-1]
            (ARs carry vapour poleward; this rejects the moist trade-wind belt); None to skip the test.
        ar_max_points: at most this many cells of a region enter the pairwise length computation (the
            length is then a slight underestimate; bounds the cost on fine grids).
    TC arguments:
        tc_lat_range: (min, max) absolute latitude [deg] of a cyclone centre.
        tc_search_radius_km: a centre is the lowest PSL within this distance [km].
        tc_min_depth_hpa: centre PSL at least this far [hPa] below the mean PSL of the ring
            ``tc_env_radii_km``.
        tc_env_radii_km: (inner, outer) radii [km] of the ring taken as the environment.
        tc_wind: names of the (u, v) winds used for the vorticity [m s-1].
        tc_min_vorticity: minimum mean cyclonic relative vorticity [s-1] within ``tc_vorticity_radius_km``
            (sign taken so that cyclonic is positive in both hemispheres).
        tc_vorticity_radius_km: radius [km] of that mean.
        tc_min_warm_core_k: if set, ``tc_warm_core_field`` at the centre must exceed its ring mean by this
            much [K].
        tc_warm_core_field: temperature field for the warm-core test (``T500`` or ``T200``).
        tc_radius_km: radius [km] of the disk labelled TC around each detected centre.
        psl_field: name of the sea-level pressure [Pa].
        tmq_field: name of the precipitable water [kg m-2].
        connectivity: 4 or 8 neighbours for connected regions.
    """

    def __init__(self, ar_field: str = "ivt", ar_wind: tuple[str, str] = ("U850", "V850"),
                 ar_threshold: float | None = 250.0, ar_percentile: float | None = None,
                 ar_min_length_km: float = 2000.0, ar_min_aspect: float = 2.0,
                 ar_lat_range: tuple[float, float] = (20.0, 80.0), ar_min_poleward_ivt: float | None = 50.0,
                 ar_max_points: int = 600,
                 tc_lat_range: tuple[float, float] = (5.0, 40.0), tc_search_radius_km: float = 600.0,
                 tc_min_depth_hpa: float = 8.0, tc_env_radii_km: tuple[float, float] = (600.0, 1200.0),
                 tc_wind: tuple[str, str] = ("U850", "V850"), tc_min_vorticity: float = 3e-5,
                 tc_vorticity_radius_km: float = 300.0, tc_min_warm_core_k: float | None = None,
                 tc_warm_core_field: str = "T500", tc_radius_km: float = 500.0,
                 psl_field: str = "PSL", tmq_field: str = "TMQ", connectivity: int = 8):
        if ar_field not in ("ivt", "tmq"):
            raise ValueError(f"ar_field={ar_field!r}: expected 'ivt' or 'tmq'")
        if ar_threshold is None and ar_percentile is None:
            raise ValueError("give ar_threshold, ar_percentile or both")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity={connectivity}: expected 4 or 8")
        vars(self).update({k: v for k, v in locals().items() if k != "self"})  # every argument, as an attribute

    # ------------------------------------------------------------------ public
    def predict(self, ds: xr.Dataset) -> xr.DataArray:
        """Labels (int64: 0 background, 1 TC, 2 AR) on ds's (time, lat, lon), or (lat, lon) if ds has no time."""
        needed = {self.psl_field, self.tmq_field, *self.tc_wind}
        if self.ar_field == "ivt" or self.ar_min_poleward_ivt is not None:
            needed |= set(self.ar_wind)
        if self.tc_min_warm_core_k is not None:
            needed.add(self.tc_warm_core_field)
        missing = sorted(needed - set(ds.data_vars))
        if missing:
            raise ValueError(f"HeuristicDetector needs variables {missing}; "
                             f"the dataset has {sorted(map(str, ds.data_vars))}")
        has_time = "time" in ds[self.psl_field].dims
        dims = ("time", "lat", "lon") if has_time else ("lat", "lon")
        lat, lon = ds["lat"].values.astype(float), ds["lon"].values.astype(float)

        def get(name):
            a = ds[name].transpose(*dims).values.astype(np.float64)
            return a if has_time else a[None]

        psl, tmq = get(self.psl_field), get(self.tmq_field)
        uses_wind = self.ar_field == "ivt" or self.ar_min_poleward_ivt is not None
        uar, var = (get(self.ar_wind[0]), get(self.ar_wind[1])) if uses_wind else (None, None)
        utc, vtc = get(self.tc_wind[0]), get(self.tc_wind[1])
        warm = get(self.tc_warm_core_field) if self.tc_min_warm_core_k is not None else None
        out = np.zeros(psl.shape, dtype=np.int64)
        area = cell_area_km2(lat, lon)
        for t in range(psl.shape[0]):
            field = tmq[t] * np.hypot(uar[t], var[t]) if self.ar_field == "ivt" else tmq[t]
            poleward = None if var is None else np.sign(lat)[:, None] * tmq[t] * var[t]
            out[t][self.detect_rivers(field, lat, lon, area, poleward)] = AR
            centres = self.detect_cyclones(psl[t], utc[t], vtc[t], lat, lon, None if warm is None else warm[t])
            out[t][self.cyclone_mask(centres, lat, lon)] = TC
        out = out if has_time else out[0]
        coords = {d: ds[d] for d in dims if d in ds.coords}
        return xr.DataArray(out, dims=dims, coords=coords, name="LABELS",
                            attrs={"long_name": "heuristic TC / AR labels", **FLAG_ATTRS})

    # ------------------------------------------------------------------ ARs
    def detect_rivers(self, field: np.ndarray, lat: np.ndarray, lon: np.ndarray, area: np.ndarray | None = None,
                      poleward: np.ndarray | None = None) -> np.ndarray:
        """Boolean (lat, lon) mask of the AR regions in one snapshot of the AR field.

        ``poleward`` is the poleward moisture transport [kg m-1 s-1] for the ``ar_min_poleward_ivt`` test.
        """
        alat = np.abs(lat)[:, None]
        mask = (alat >= self.ar_lat_range[0]) & (alat <= self.ar_lat_range[1]) & np.isfinite(field)
        if self.ar_threshold is not None:
            mask &= field >= self.ar_threshold
        if self.ar_percentile is not None:
            mask &= field >= np.nanpercentile(field, self.ar_percentile, axis=-1, keepdims=True)
        labels, n = _label_periodic(mask, self.connectivity)
        if n == 0:
            return mask
        area = cell_area_km2(lat, lon) if area is None else area
        keep = np.zeros(n + 1, bool)
        objects = ndimage.value_indices(labels, ignore_value=0)
        for k, (rows, cols) in objects.items():
            if (self.ar_min_poleward_ivt is not None and poleward is not None
                    and np.average(poleward[rows, cols], weights=area[rows, cols]) < self.ar_min_poleward_ivt):
                continue
            length = self._length_km(lat[rows], lon[cols])
            if length < self.ar_min_length_km:
                continue
            width = area[rows, cols].sum() / length
            keep[k] = length / width >= self.ar_min_aspect
        return keep[labels]

    def _length_km(self, la: np.ndarray, lo: np.ndarray) -> float:
        """Largest great-circle distance [km] between cells (evenly subsampled to ``ar_max_points``)."""
        if la.size > self.ar_max_points:
            idx = np.linspace(0, la.size - 1, self.ar_max_points).astype(int)
            la, lo = la[idx], lo[idx]
        return float(great_circle_km(la[:, None], lo[:, None], la[None], lo[None]).max()) if la.size > 1 else 0.0

    # ------------------------------------------------------------------ TCs
    def detect_cyclones(self, psl, u, v, lat, lon, warm=None) -> list[tuple[float, float]]:
        """(lat, lon) [deg] of cyclone centres in one snapshot; psl [Pa], u, v [m s-1], warm [K] on (lat, lon)."""
        alat = np.abs(lat)
        dlat_km = np.deg2rad(np.abs(np.diff(lat)).mean()) * EARTH_RADIUS_KM if lat.size > 1 else 1e9
        dlon_km = np.deg2rad(360.0 / lon.size) * EARTH_RADIUS_KM * np.cos(np.deg2rad(min(self.tc_lat_range[1], 89.0)))
        ny = 2 * int(round(self.tc_search_radius_km / dlat_km)) + 1
        nx = 2 * int(round(self.tc_search_radius_km / dlon_km)) + 1
        low = ndimage.minimum_filter(psl, size=(ny, min(nx, lon.size)), mode=("nearest", "wrap"))
        band = (alat >= self.tc_lat_range[0]) & (alat <= self.tc_lat_range[1])
        cand = np.argwhere((psl <= low) & band[:, None])
        zeta = relative_vorticity(u, v, lat, lon)
        r_max = max(self.tc_env_radii_km[1], self.tc_vorticity_radius_km)
        centres = []
        for j, i in cand:
            rows = np.flatnonzero(np.abs(lat - lat[j]) * 111.2 <= r_max + dlat_km)
            d = great_circle_km(lat[j], lon[i], lat[rows][:, None], lon[None, :])
            ring = (d >= self.tc_env_radii_km[0]) & (d <= self.tc_env_radii_km[1])
            if not ring.any():
                continue
            depth_hpa = (psl[rows][ring].mean() - psl[j, i]) / 100.0
            if depth_hpa < self.tc_min_depth_hpa:
                continue
            inner = d <= max(self.tc_vorticity_radius_km, 1e-6)
            if np.sign(lat[j]) * zeta[rows][inner].mean() < self.tc_min_vorticity:
                continue
            if warm is not None and warm[j, i] - warm[rows][ring].mean() < self.tc_min_warm_core_k:
                continue
            centres.append((float(lat[j]), float(lon[i])))
        return centres

    def cyclone_mask(self, centres, lat, lon) -> np.ndarray:
        """Boolean (lat, lon) mask of the disks of radius ``tc_radius_km`` around the centres."""
        mask = np.zeros((lat.size, lon.size), bool)
        for la, lo in centres:
            rows = np.flatnonzero(np.abs(lat - la) * 111.2 <= self.tc_radius_km + 1.0)
            mask[rows] |= great_circle_km(la, lo, lat[rows][:, None], lon[None, :]) <= self.tc_radius_km
        return mask
