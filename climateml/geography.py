"""The real Earth, offline: land fraction on any lat/lon grid, coastlines and degree-labelled map axes.

The land/sea mask comes from the ``global-land-mask`` package (MIT licence; a 30 arc-second mask
derived from NOAA's GLOBE 1-km elevation data, shipped inside the package, so nothing is downloaded).
Everything derived from it is cached in memory, and the decompressed (subsampled) mask also on disk
(:func:`cache_dir`), so only the first call on a machine costs a few seconds (decompressing the 2.5 MB
file); later processes read the 7 MB cache in a fraction of a second.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

#: Coarsening of the package's 1/120 degree mask that is kept in memory (4 -> 1/30 degree, ~3.7 km,
#: 58 MB as booleans instead of the 930 MB the package holds when imported).
SOURCE_STRIDE = 4
#: Natural Earth coastline scales cartopy may have on disk, finest first.
NATURAL_EARTH_SCALES = ("10m", "50m", "110m")
_NICE_STEPS_DEG = (0.25, 0.5, 1, 2, 2.5, 5, 10, 15, 20, 30, 45, 60, 90)


# --------------------------------------------------------------------------------------------------
# land fraction
# --------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where derived data are kept between runs: $CLIMATEML_CACHE_DIR, else $XDG_CACHE_HOME/climateml, else
    ~/.cache/climateml."""
    if os.environ.get("CLIMATEML_CACHE_DIR"):
        return Path(os.environ["CLIMATEML_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "climateml"


def _package_mask_file() -> Path:
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None:
        raise ImportError("climateml.geography needs the 'global-land-mask' package: pip install global-land-mask")
    return Path(next(iter(spec.submodule_search_locations))) / "globe_combined_mask_compressed.npz"


def _read_subsampled(path: Path, stride: int) -> tuple[np.ndarray, float, float, float, float]:
    """Every ``stride``-th point of the package's mask as land (True), decompressed row block by row block so
    memory stays near the result's size (the whole mask is 930 MB of booleans)."""
    import zipfile

    with np.load(path) as data:
        lat, lon = data["lat"], data["lon"]
    with zipfile.ZipFile(path) as archive, archive.open("mask.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.bool_ or len(shape) != 2:
            raise ValueError(f"{path}: unexpected mask layout {shape}, {dtype}, fortran={fortran}")
        nrow, ncol = shape
        rows = []
        block = stride * max(1, 4_000_000 // (stride * ncol))          # whole strides of rows, ~4 MB a read
        for start in range(0, nrow, block):
            n = min(block, nrow - start)
            chunk = np.frombuffer(f.read(n * ncol), dtype=np.bool_).reshape(n, ncol)
            rows.append(~chunk[::stride, ::stride])                      # the file stores "is ocean"
    land = np.ascontiguousarray(np.concatenate(rows))
    return land, float(lat[0]), float(lat[1] - lat[0]) * stride, float(lon[0]), float(lon[1] - lon[0]) * stride


@functools.lru_cache(maxsize=1)
def _source_mask(stride: int = SOURCE_STRIDE) -> tuple[np.ndarray, float, float, float, float]:
    """(is_land[lat, lon] bool, lat0, dlat, lon0, dlon) of the package's mask, keeping every ``stride``-th point.

    Decompressing the package's mask takes several seconds, so the subsampled mask is also kept on disk
    (bit-packed, 7 MB, in :func:`cache_dir`) and later processes read it in a fraction of a second; the
    cache is keyed on the package file's size and modification time, and is skipped if it cannot be written.
    Falls back to the package's public ``globe.is_land`` if its data file is not where version 1.0 keeps it.
    """
    path = _package_mask_file()
    if path.exists():
        stat = path.stat()
        cached = cache_dir() / f"land_mask_stride{stride}_{stat.st_size}_{int(stat.st_mtime)}.npz"
        try:
            with np.load(cached) as data:
                ncol = int(data["shape"][1])
                land = np.unpackbits(data["packed"], axis=1, count=ncol).view(bool)
                return (land, *(float(v) for v in data["grid"]))
        except Exception:  # absent, partial or from another version: rebuild it
            pass
        land, *grid = _read_subsampled(path, stride)
        from climateml.writers import atomic_path  # noqa: PLC0415 (imports xarray: only when the cache is written)

        try:
            with atomic_path(cached) as tmp:  # the path ends in .npz, so savez writes exactly there
                np.savez(tmp, packed=np.packbits(land, axis=1), shape=np.array(land.shape), grid=np.array(grid))
        except OSError:  # a read-only home: the mask is simply rebuilt next time
            pass
        return (land, *grid)
    from global_land_mask import globe  # public API; keeps the full mask in memory

    dlat, dlon = -stride / 120.0, stride / 120.0
    lat = 90.0 + dlat * np.arange(int(180 / -dlat))
    lon = -180.0 + dlon * np.arange(int(360 / dlon))
    land = np.stack([globe.is_land(np.full_like(lon, la), lon) for la in lat])
    return land, 90.0, dlat, -180.0, dlon


def _cell_edges(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) edges of cells centred on ``centres`` (ascending or descending), half-way between centres."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - (mid[0] - centres[0])
    last = centres[-1] + (centres[-1] - mid[-1])
    edges = np.concatenate([[first], mid, [last]])
    return edges[:-1], edges[1:]


@functools.lru_cache(maxsize=32)
def _land_fraction_cached(lat: tuple, lon: tuple, oversample: int) -> np.ndarray:
    land, lat0, dlat, lon0, dlon = _source_mask()
    n = oversample
    frac = (np.arange(n) + 0.5) / n

    lo, hi = _cell_edges(np.asarray(lat))
    lo, hi = np.clip(lo, -90.0, 90.0), np.clip(hi, -90.0, 90.0)
    sub_lat = lo[:, None] + frac[None, :] * (hi - lo)[:, None]             # (nlat, n)
    weight = np.cos(np.deg2rad(sub_lat))                                    # area of each sub-row
    weight = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
    i = np.clip(np.floor((sub_lat - lat0) / dlat).astype(np.int64), 0, land.shape[0] - 1)

    lo, hi = _cell_edges(np.asarray(lon))
    sub_lon = lo[:, None] + frac[None, :] * (hi - lo)[:, None]             # (nlon, n)
    sub_lon = (sub_lon - lon0) % 360.0 + lon0                               # into the source's convention
    j = np.clip(np.floor((sub_lon - lon0) / dlon).astype(np.int64), 0, land.shape[1] - 1)

    out = np.empty((len(lat), len(lon)))
    rows = max(1, 2_000_000 // (n * n * len(lon)))                          # bound the memory of one block
    for start in range(0, len(lat), rows):
        block = land[i[start:start + rows, :, None, None], j[None, None, :, :]]  # (rows, n, nlon, n)
        out[start:start + rows] = np.einsum("rakb,ra->rk", block, weight[start:start + rows]) / n
    out = np.clip(out, 0.0, 1.0)
    out.flags.writeable = False
    return out


def land_fraction(lat: Sequence[float] | np.ndarray, lon: Sequence[float] | np.ndarray, oversample: int = 8) -> np.ndarray:
    """Fraction of each grid cell that is land, (lat, lon) in [0, 1], from the real Earth's land mask.

    Args:
        lat: cell-centre latitudes [degrees north], ascending or descending; the first/last cells extend
            half a spacing beyond their centres, clipped at the poles (so ClimateBench's -90..90 grid has
            half-size polar cells). A single latitude is one cell spanning the whole sphere (as
            :func:`climateml.grid.cell_area` has it): its fraction is the area-weighted mean over all
            latitudes.
        lon: cell-centre longitudes [degrees east], in 0..360, -180..180 or any other window; a single
            longitude is one cell around the whole globe.
        oversample: sub-points per cell along each axis (``oversample**2`` per cell, weighted by
            cos(lat) within the cell); 8 gives fractions to about 1/64 on a 1.9 x 2.5 degree grid.

    Cached on (lat, lon, oversample): repeated calls cost a dictionary lookup and a copy. Lakes count as
    land (the mask is GLOBE's valid-elevation area).
    """
    lat_a, lon_a = np.asarray(lat, dtype=float).ravel(), np.asarray(lon, dtype=float).ravel()
    if lat_a.size == 0 or lon_a.size == 0:
        raise ValueError(f"land_fraction needs at least one latitude and one longitude, got "
                         f"{lat_a.size} x {lon_a.size}")
    if lat_a.size == 1 or lon_a.size == 1:  # a cell spanning the sphere along an axis: average over 2.5-degree cells
        from climateml.grid import lat_weights

        fine_lat = lat_a if lat_a.size > 1 else np.linspace(-88.75, 88.75, 72)
        fine_lon = lon_a if lon_a.size > 1 else np.arange(0.0, 360.0, 2.5)
        frac = land_fraction(fine_lat, fine_lon, oversample)
        if lat_a.size == 1:
            w = lat_weights(fine_lat)
            frac = (frac * w[:, None]).sum(axis=0, keepdims=True) / w.sum()
        return frac.mean(axis=1, keepdims=True) if lon_a.size == 1 else frac
    if np.any(np.abs(lat_a) > 90.0) or not np.all(np.isfinite(lat_a)) or not np.all(np.isfinite(lon_a)):
        raise ValueError(f"land_fraction: latitudes must be finite and within -90..90 degrees, got {lat_a.min()}..{lat_a.max()}")
    if int(oversample) < 1:
        raise ValueError(f"land_fraction: oversample must be >= 1, got {oversample}")
    key_lat = tuple(np.round(lat_a, 9).tolist())
    key_lon = tuple(np.round(lon_a, 9).tolist())
    return _land_fraction_cached(key_lat, key_lon, int(oversample)).copy()


def land_mask(lat, lon, threshold: float = 0.5, oversample: int = 8) -> np.ndarray:
    """1.0 where the land fraction of a cell exceeds ``threshold``, else 0.0; (lat, lon)."""
    return (land_fraction(lat, lon, oversample=oversample) > threshold).astype(float)


# --------------------------------------------------------------------------------------------------
# coastlines
# --------------------------------------------------------------------------------------------------

def natural_earth_coastline_file(scales: Sequence[str] = NATURAL_EARTH_SCALES) -> Path | None:
    """Path of a Natural Earth coastline shapefile cartopy already has on disk, or None; never downloads.

    Looks where cartopy's downloader would put ``ne_<scale>_coastline.shp`` under
    ``cartopy.config['pre_existing_data_dir']`` and ``cartopy.config['data_dir']``.
    """
    try:
        import cartopy
    except Exception:  # not installed or broken install: the land-mask contour is used instead
        return None
    dirs = [cartopy.config.get(k) for k in ("pre_existing_data_dir", "data_dir")]
    for scale in scales:
        for d in dirs:
            if d:
                path = Path(d) / "shapefiles" / "natural_earth" / "physical" / f"ne_{scale}_coastline.shp"
                if path.is_file():
                    return path
    return None


def _resolve_lon_range(ax, lon_range) -> tuple[float, float]:
    if lon_range is not None:
        lo, hi = (float(v) for v in lon_range)
    elif ax.has_data():
        lo, hi = ax.get_xlim()
    else:
        lo, hi = 0.0, 360.0
    return min(lo, hi), max(lo, hi)


def _coastline_segments_natural_earth(path: Path) -> list[np.ndarray]:
    import cartopy.io.shapereader as shpreader

    segments = []
    for geom in shpreader.Reader(str(path)).geometries():
        parts = getattr(geom, "geoms", [geom])
        for part in parts:
            xy = np.asarray(part.coords)
            if len(xy) > 1:
                segments.append(xy[:, :2])
    return segments


def add_coastlines(ax, lon_range: tuple[float, float] | None = None, resolution: float = 0.25,
                   source: str = "auto", **style):
    """Draw the world's coastlines on an axes with longitude [degrees east] on x and latitude on y.

    Works for any longitude window (0..360, -180..180, regional): the coastline is repeated every 360
    degrees and clipped to the axes. Axis limits are left as they were (x set to ``lon_range`` if given).

    Args:
        ax: matplotlib axes (plain, not a cartopy GeoAxes).
        lon_range: (west, east) of the x axis [degrees east]; default: the axes' x limits if it has
            data, else 0..360 (then the limits are set to 0..360 x -90..90).
        resolution: grid spacing [degrees] of the land mask whose 0.5 land-fraction contour is drawn
            (0.25 -> 720 x 1440 cells, computed once per process: ~0.1 s once the mask is loaded).
        source: "auto" (Natural Earth via cartopy if its shapefile is already on disk, else the land
            mask), "land_mask" or "natural_earth" (error if the file is absent; nothing is downloaded).
        **style: passed to the line artist; default ``colors="k"``, ``linewidths=0.6``.

    Returns the artist that was added (a ContourSet or a LineCollection).
    """
    from matplotlib.collections import LineCollection

    if source not in ("auto", "land_mask", "natural_earth"):
        raise ValueError(f"add_coastlines: source must be 'auto', 'land_mask' or 'natural_earth', got {source!r}")
    had_data = ax.has_data()
    lo, hi = _resolve_lon_range(ax, lon_range)
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    style = {"colors": "k", "linewidths": 0.6, **style}
    path = natural_earth_coastline_file() if source != "land_mask" else None
    if source == "natural_earth" and path is None:
        raise FileNotFoundError("add_coastlines(source='natural_earth'): no Natural Earth coastline shapefile in "
                                "cartopy's data directories (and nothing is downloaded); use source='land_mask'")
    if path is not None:
        segments = _coastline_segments_natural_earth(path)
        shifted = []
        for offset in 360.0 * np.arange(np.floor((lo + 180.0) / 360.0), np.ceil((hi + 180.0) / 360.0) + 1):
            shifted += [s + [offset, 0.0] for s in segments if s[:, 0].max() + offset >= lo and s[:, 0].min() + offset <= hi]
        artist = ax.add_collection(LineCollection(shifted, **style))
    else:
        lat, lon, frac = _coastline_field(float(resolution))
        reps = np.arange(np.floor((lo - lon[0]) / 360.0) - 1, np.ceil((hi - lon[0]) / 360.0) + 1)
        lon_t = np.concatenate([lon + 360.0 * k for k in reps])
        keep = (lon_t >= lo - 2 * resolution) & (lon_t <= hi + 2 * resolution)
        frac_t = np.tile(frac, (1, len(reps)))[:, keep]
        artist = ax.contour(lon_t[keep], lat, frac_t, levels=[0.5], **style)
    ax.set_xlim(xlim if had_data and lon_range is None else (lo, hi))
    ax.set_ylim(ylim if had_data else (-90.0, 90.0))
    return artist


@functools.lru_cache(maxsize=4)
def _coastline_field(resolution: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon 0..360, land fraction) on a global grid of ``resolution`` degrees, padded to the poles."""
    n = int(round(180.0 / resolution))
    lat = -90.0 + resolution * (np.arange(n) + 0.5)
    lon = resolution * (np.arange(int(round(360.0 / resolution))) + 0.5)
    oversample = max(2, int(np.ceil(resolution * 16)))  # sub-points ~1/16 degree apart
    frac = land_fraction(lat, lon, oversample=oversample)
    lat = np.concatenate([[-90.0], lat, [90.0]])
    frac = np.concatenate([frac[:1], frac, frac[-1:]])
    return lat, lon, frac


# --------------------------------------------------------------------------------------------------
# axes
# --------------------------------------------------------------------------------------------------

def lon_label(lon: float, decimals: int = 0) -> str:
    """'60°E', '120°W', '0°', '180°' for a longitude in any convention [degrees east]."""
    x = (float(lon) + 180.0) % 360.0 - 180.0
    x = 180.0 if np.isclose(abs(x), 180.0) else x
    text = f"{abs(x):.{decimals}f}°"
    if np.isclose(x, 0.0) or np.isclose(abs(x), 180.0):
        return text
    return text + ("E" if x > 0 else "W")


def lat_label(lat: float, decimals: int = 0) -> str:
    """'30°S', '0°', '60°N' for a latitude [degrees north]."""
    y = float(lat)
    text = f"{abs(y):.{decimals}f}°"
    return text if np.isclose(y, 0.0) else text + ("N" if y > 0 else "S")


def _nice_ticks(lo: float, hi: float, max_ticks: int) -> np.ndarray:
    span = hi - lo
    step = next((s for s in _NICE_STEPS_DEG if span / s <= max_ticks - 1), _NICE_STEPS_DEG[-1])
    ticks = np.arange(np.ceil(lo / step - 1e-9), np.floor(hi / step + 1e-9) + 1) * step
    return ticks


def format_map_axes(ax, lon: Sequence[float] | np.ndarray, lat: Sequence[float] | np.ndarray,
                    max_ticks: int = 7, max_aspect: float = 2.0) -> None:
    """Limits to the grid's extent, ticks every 'nice' number of degrees labelled 60°E / 30°S, and an
    aspect of 1/cos(mid-latitude) so a degree of longitude looks as long as it is near the centre.

    Args:
        ax: matplotlib axes with longitude [degrees east] on x and latitude [degrees north] on y.
        lon, lat: cell-centre coordinates of the field drawn (1-D); the extent includes half a cell
            on each side (clipped at the poles).
        max_ticks: at most this many ticks per axis (steps from 0.25 to 90 degrees).
        max_aspect: upper bound of the y/x aspect (regions near the poles would otherwise be tall strips).
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter

    lon_a, lat_a = np.sort(np.asarray(lon, dtype=float).ravel()), np.sort(np.asarray(lat, dtype=float).ravel())
    if lon_a.size >= 2:
        lo, hi = _cell_edges(lon_a)
        x0, x1 = lo[0], hi[-1]
    else:
        x0, x1 = lon_a[0] - 0.5, lon_a[0] + 0.5
    if lat_a.size >= 2:
        lo, hi = _cell_edges(lat_a)
        y0, y1 = max(lo[0], -90.0), min(hi[-1], 90.0)
    else:
        y0, y1 = max(lat_a[0] - 0.5, -90.0), min(lat_a[0] + 0.5, 90.0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.xaxis.set_major_locator(FixedLocator(_nice_ticks(x0, x1, max_ticks)))
    ax.yaxis.set_major_locator(FixedLocator(_nice_ticks(y0, y1, max_ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: lon_label(v, 0 if float(v).is_integer() else 1)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: lat_label(v, 0 if float(v).is_integer() else 1)))
    ax.tick_params(labelsize=7)
    mid = np.deg2rad(0.5 * (y0 + y1))
    ax.set_aspect(min(1.0 / max(np.cos(mid), 1e-6), max_aspect), adjustable="box")
