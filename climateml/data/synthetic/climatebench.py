"""Sample data in the ClimateBench layout, driven by real emission scenarios.

Writes ``inputs_<scenario>.nc`` and ``outputs_<scenario>.nc`` (or ``.zarr``) exactly as the processed
ClimateBench files are laid out (Watson-Parris et al. 2022, doi:10.1029/2021MS002954):

* inputs: ``CO2`` (time) cumulative anthropogenic emissions since 1850 [GtCO2], ``CH4`` (time)
  emissions [GtCH4 yr-1], ``SO2`` and ``BC`` (time, latitude, longitude) emission fluxes
  [kg m-2 s-1]; integer years on ``time``.
* outputs: ``tas``, ``diurnal_temperature_range`` [K] and ``pr``, ``pr90`` [kg m-2 s-1] on
  (member, time, lat, lon), anomalies against pre-industrial, with the stray scalar ``quantile``
  coordinate the real files carry.

The emissions are the RCMIP v5.1.0 global series of the SSP marker scenarios (``rcmip_emissions.csv``
beside this file, extracted from the package fair==1.6.4 by ``scripts/extract_rcmip_emissions.py``;
RCMIP data CC-BY-4.0, fair Apache-2.0). We ship the 24 kB extract rather than depend on fair: we need
four series out of its 7 MB of tables and none of its code, and fair 1.x is no longer maintained.
The response is a small, physically shaped climate model, deliberately not linear in the inputs:

Carbon cycle (impulse response of Joos et al. 2013), with E the CO2 emissions [GtCO2 yr-1]::

    R_k(t) = R_k(t-1) exp(-1/tau_k) + E(t),   tau = (inf, 394.4, 36.54, 4.304) yr
    C(t)   = C0 + sum_k a_k R_k(t) / 7.8,      a = (0.2173, 0.2240, 0.2824, 0.2763), C0 = 285 ppm

Methane: one box, lifetime 9.3 yr, 2.78 Mt per ppb, M0 = 808 ppb, driven by emissions above 1850's.

Effective radiative forcing [W m-2]::

    F_CO2 = 5.35 ln(C / C0)                      (logarithmic in concentration)
    F_CH4 = 0.036 (sqrt(M) - sqrt(M0))
    F_SO2 = -(0.004 dS + 0.55 ln(1 + dS / 34))   (aerosol-radiation + saturating cloud effect; dS in Mt SO2/yr above 1850)
    F_BC  = 0.03 dB                              (dB in Mt BC/yr above 1850)

Global temperature: a two-layer energy-balance model (Held et al. 2010; Geoffroy et al. 2013), fast
(~4 yr) and slow (~200 yr) time scales, run separately for greenhouse-gas and aerosol forcing::

    C dT/dt   = F - lambda T - gamma (T - T_d),  C = 8,   lambda = 1.2, gamma = 0.67  [W yr m-2 K-1, W m-2 K-1]
    C_d dT_d/dt = gamma (T - T_d),               C_d = 100

Spatial pattern::

    tas(x, t) = A(x, t) (T_ghg + 0.6 T_aer) + 0.4 T_aer S(x, t) / <S>(t) + eta(x, t)
    A(x, t)   = [1 + 0.5 land(x) + arctic(x) (1.5 + tanh(T_ghg / 2))] / <...>   (area mean 1)

land(x) is the fraction of the cell that is land, from the real Earth's land/sea mask
(``climateml.geography.land_fraction``, the ``global-land-mask`` package's 1 km mask averaged over each
cell of the grid asked for; nothing is downloaded); arctic(x) ramps from 0 at 60N to 1 at 80N and the
amplification grows with warming (sea-ice loss). S(x, t) is the smoothed SO2 emission map, so the
remaining 40 % of aerosol cooling sits downwind of the industrial regions that emit it (North America
and Europe first, East and South Asia later); the emissions come from the land of those regions
(plus 5 % as much over the nearby sea, for shipping). eta is internal variability: Gaussian-smoothed white
noise (about 1500 km), AR(1) in time (rho = 0.6), larger over land and at high latitude, drawn
independently for every member. ``diurnal_temperature_range``, ``pr`` and ``pr90`` follow from tas and
the local aerosol loading (hydrological sensitivity 2 % K-1 for pr, 6 % K-1 for pr90, aerosol
dimming of the diurnal range). Everything is deterministic for a given seed.

``hist-GHG`` holds SO2 and BC at 1850 levels; ``hist-aer`` holds CH4 at its 1850 level and adds no
CO2 (cumulative CO2 stays 0). SSPs continue from the end of the historical run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from climateml.data.io import DataError, write_dataset
from climateml.metrics import cell_area

EMISSIONS_CSV = Path(__file__).with_name("rcmip_emissions.csv")
SCENARIOS = ("historical", "ssp126", "ssp245", "ssp370", "ssp585", "hist-GHG", "hist-aer")
MEMBERS = {"ssp585": 1}  # ClimateBench's NorESM2 has 3 members for every other scenario
FIRST_YEAR, LAST_HIST, LAST_YEAR = 1850, 2014, 2100
SECONDS_PER_YEAR = 365.25 * 86400.0
KG_PER_MT = 1e9
MM_PER_DAY = 1.0 / 86400.0  # kg m-2 s-1 per mm day-1

# carbon cycle (Joos et al. 2013)
_CO2_A = np.array([0.2173, 0.2240, 0.2824, 0.2763])
_CO2_TAU = np.array([np.inf, 394.4, 36.54, 4.304])
_GTCO2_PER_PPM = 7.8
_C0_PPM = 285.0
# methane
_CH4_TAU, _MT_PER_PPB, _M0_PPB = 9.3, 2.78, 808.0
# two-layer energy balance
_HEAT_CAP, _HEAT_CAP_DEEP, _LAMBDA, _GAMMA = 8.0, 100.0, 1.2, 0.67
# aerosol split: global-mean part and regional (downwind of sources) part
_AER_GLOBAL_SHARE = 0.6
# emission flux over the sea relative to the land of a source region (shipping lanes)
_SHIPPING_SHARE = 0.05


@dataclass(frozen=True)
class Grid:
    """A regular latitude-longitude grid (degrees); ClimateBench's is 96 x 144 with poles included."""

    nlat: int = 96
    nlon: int = 144

    @property
    def lat(self) -> np.ndarray:
        return np.linspace(-90.0, 90.0, self.nlat) if self.nlat > 1 else np.zeros(1)

    @property
    def lon(self) -> np.ndarray:
        return np.arange(self.nlon) * (360.0 / self.nlon)


@dataclass(frozen=True)
class Physics:
    """The response's knobs; :data:`PHYSICS` names the variants the emulator is checked on (its defaults were
    chosen on all of them, never on one). ``default`` is the sample data's physics described above.

    Args:
        land_amplification: extra warming of land per unit global warming (0.5 above).
        arctic_amplification: extra Arctic warming (1.5 above; plus tanh(T_ghg / 2) of sea-ice loss).
        aerosol_global_share: share of the aerosol response spread over the globe (0.6 above); the rest is
            regional, downwind of the emitters.
        aerosol_saturation: Mt SO2 yr-1 at which the aerosol-cloud forcing saturates (34 above); smaller
            saturates earlier (a more non-linear aerosol response).
        aerosol_cloud: amplitude of the saturating aerosol-cloud forcing [W m-2] (0.55 above).
        climate_feedback: lambda of the energy balance [W m-2 K-1] (1.2 above; smaller: more sensitive).
        variability: multiplies the internal variability's standard deviation (1 above).
        variability_rho: its year-to-year AR(1) correlation (0.6 above).
    """

    land_amplification: float = 0.5
    arctic_amplification: float = 1.5
    aerosol_global_share: float = _AER_GLOBAL_SHARE
    aerosol_saturation: float = 34.0
    aerosol_cloud: float = 0.55
    climate_feedback: float = _LAMBDA
    variability: float = 1.0
    variability_rho: float = 0.6


#: physics variants of the sample data: ``default``; ``regional``: other regional sensitivities (strong land and
#: Arctic amplification, mostly regional aerosol cooling); ``saturating_aerosol``: an aerosol-cloud forcing that
#: saturates early and strongly, with a more sensitive climate; ``noisy``: three times the internal variability,
#: more persistent from year to year.
PHYSICS = {
    "default": Physics(),
    "regional": Physics(land_amplification=1.2, arctic_amplification=3.0, aerosol_global_share=0.2),
    "saturating_aerosol": Physics(aerosol_saturation=8.0, aerosol_cloud=1.2, climate_feedback=0.9),
    "noisy": Physics(variability=3.0, variability_rho=0.8),
}


def read_emissions(path: Path = EMISSIONS_CSV) -> dict[str, dict[str, np.ndarray]]:
    """Global emissions per scenario: {scenario: {"year", "co2", "ch4", "so2", "bc"}} in the CSV's units."""
    rows: dict[str, list[list[float]]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(line for line in f if not line.startswith("#"))
        next(reader)
        for scenario, *values in reader:
            rows.setdefault(scenario, []).append([float(v) for v in values])
    out = {}
    for scenario, values in rows.items():
        a = np.asarray(values)
        out[scenario] = dict(year=a[:, 0].astype(int), co2=a[:, 1], ch4=a[:, 2], so2=a[:, 3], bc=a[:, 4])
    return out


def scenario_emissions(scenario: str, table: dict | None = None) -> dict[str, np.ndarray]:
    """Yearly emissions from 1850 to the scenario's last year (SSPs include their historical part)."""
    table = table or read_emissions()
    hist = table["historical"]
    if scenario in ("historical", "hist-GHG", "hist-aer"):
        e = {k: v.copy() for k, v in hist.items()}
        if scenario == "hist-GHG":
            e["so2"][:] = hist["so2"][0]
            e["bc"][:] = hist["bc"][0]
        elif scenario == "hist-aer":
            e["co2"][:] = 0.0
            e["ch4"][:] = hist["ch4"][0]
        return e
    if scenario not in table:
        raise DataError(f"no emissions for scenario {scenario!r}; known: {sorted(table)}")
    return {k: np.concatenate([hist[k], table[scenario][k]]) for k in hist}


def _co2_concentration(co2: np.ndarray) -> np.ndarray:
    decay = np.exp(-1.0 / _CO2_TAU)
    boxes = np.zeros(4)
    conc = np.empty_like(co2)
    for i, e in enumerate(co2):
        boxes = boxes * decay + e
        conc[i] = _C0_PPM + (_CO2_A @ boxes) / _GTCO2_PER_PPM
    return conc


def _ch4_concentration(ch4: np.ndarray) -> np.ndarray:
    decay = np.exp(-1.0 / _CH4_TAU)
    excess, conc = 0.0, np.empty_like(ch4)
    for i, e in enumerate(ch4):
        excess = excess * decay + (e - ch4[0]) / _MT_PER_PPB
        conc[i] = _M0_PPB + excess
    return conc


def forcing(e: dict[str, np.ndarray], physics: Physics = Physics()) -> tuple[np.ndarray, np.ndarray]:
    """Greenhouse-gas and aerosol effective radiative forcing [W m-2] per year."""
    f_co2 = 5.35 * np.log(_co2_concentration(e["co2"]) / _C0_PPM)
    f_ch4 = 0.036 * (np.sqrt(_ch4_concentration(e["ch4"])) - np.sqrt(_M0_PPB))
    ds = np.maximum(e["so2"] - e["so2"][0], 0.0)
    db = np.maximum(e["bc"] - e["bc"][0], 0.0)
    f_aer = -(0.004 * ds + physics.aerosol_cloud * np.log1p(ds / physics.aerosol_saturation)) + 0.03 * db
    return f_co2 + f_ch4, f_aer


def two_layer_response(f: np.ndarray, feedback: float = _LAMBDA) -> np.ndarray:
    """Surface temperature anomaly [K] of the two-layer energy-balance model, yearly steps."""
    t = td = 0.0
    out = np.empty_like(f)
    for i, fi in enumerate(f):
        t, td = (t + (fi - feedback * t - _GAMMA * (t - td)) / _HEAT_CAP,
                 td + _GAMMA * (t - td) / _HEAT_CAP_DEEP)
        out[i] = t
    return out


def land_mask(grid: Grid) -> np.ndarray:
    """Fraction of each cell that is land, (lat, lon) in [0, 1], from the real Earth's land/sea mask:
    :func:`climateml.geography.land_fraction` (the ``global-land-mask`` package's 1 km mask, shipped with it,
    nothing downloaded) on ``grid``; a 1 x 1 grid gets the Earth's land fraction, about 0.29."""
    from climateml.geography import land_fraction

    return land_fraction(grid.lat, grid.lon)


def _blobs(grid: Grid, centres: list[tuple[float, float]], width: float = 12.0) -> np.ndarray:
    """Gaussian emission hot-spots, one map per centre, each scaled to peak 1."""
    lat2, lon2 = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    maps = []
    for clon, clat in centres:
        dlon = (lon2 - clon + 180.0) % 360.0 - 180.0
        maps.append(np.exp(-0.5 * ((dlon * np.cos(np.deg2rad(clat))) ** 2 + (lat2 - clat) ** 2) / width**2))
    return np.stack(maps)


def _emission_maps(grid: Grid, years: np.ndarray, total_mt: np.ndarray, with_biomass: bool,
                   land: np.ndarray) -> np.ndarray:
    """Flux maps [kg m-2 s-1] whose area integral is the global total, shifting from west to Asia.

    Emissions come from the land in each source region (its land fraction), plus 5 % as much over the
    sea nearby (shipping).
    """
    centres = [(-85, 40), (15, 50), (115, 32), (80, 24)] + ([(20, 0)] if with_biomass else [])
    blobs = _blobs(grid, centres) * (_SHIPPING_SHARE + (1.0 - _SHIPPING_SHARE) * land)
    asia = 0.15 + 0.7 / (1.0 + np.exp(-(years - 1995.0) / 12.0))
    south = 0.3 + 0.3 / (1.0 + np.exp(-(years - 2040.0) / 15.0))  # South Asia's share of Asia grows
    w = np.stack([(1 - asia) * 0.5, (1 - asia) * 0.5, asia * (1 - south), asia * south], axis=1)
    if with_biomass:
        w = np.concatenate([w * 0.75, np.full((len(years), 1), 0.25)], axis=1)
    pattern = np.einsum("tk,kij->tij", w, blobs)
    area = cell_area(grid.lat, grid.lon)
    pattern /= (pattern * area).sum(axis=(1, 2), keepdims=True)  # m-2, integrates to 1
    return total_mt[:, None, None] * KG_PER_MT / SECONDS_PER_YEAR * pattern


def _spectral_kernel(grid: Grid, scale_km: float) -> np.ndarray:
    """Gaussian smoothing kernel on the rfft2 frequencies of the grid (lat, lon//2 + 1)."""
    dy = 20000.0 / max(grid.nlat - 1, 1)  # km per grid step in latitude
    dx = 40000.0 / grid.nlon * 0.7  # typical km per grid step in longitude
    ky = np.fft.fftfreq(grid.nlat)[:, None]
    kx = np.fft.rfftfreq(grid.nlon)[None, :]
    return np.exp(-2.0 * np.pi**2 * ((ky * scale_km / dy) ** 2 + (kx * scale_km / dx) ** 2))


def _smooth(field: np.ndarray, grid: Grid, scale_km: float = 1500.0) -> np.ndarray:
    """Gaussian smoothing over the last two (lat, lon) axes in spectral space."""
    if grid.nlat < 4 or grid.nlon < 4:
        return field
    return np.fft.irfft2(np.fft.rfft2(field) * _spectral_kernel(grid, scale_km), s=field.shape[-2:])


def _variability(rng: np.random.Generator, grid: Grid, nyears: int, rho: float = 0.6, scale_km: float = 1500.0) -> np.ndarray:
    """Unit-variance noise, spatially correlated over ``scale_km`` and AR(1) in time, (time, lat, lon) float32.

    Drawn directly as random spectral coefficients shaped by a Gaussian kernel, then one inverse FFT.
    """
    shape = (nyears, grid.nlat, grid.nlon)
    if grid.nlat < 4 or grid.nlon < 4:
        field = rng.standard_normal(shape, dtype=np.float32)
    else:
        kernel = _spectral_kernel(grid, scale_km).astype(np.float32)
        spec_shape = (nyears, *kernel.shape)
        coef = rng.standard_normal(spec_shape, dtype=np.float32) + 1j * rng.standard_normal(spec_shape, dtype=np.float32)
        field = np.fft.irfft2(coef * kernel, s=shape[1:]).astype(np.float32)
        field /= field.std() + 1e-12
    for i in range(1, nyears):
        field[i] = rho * field[i - 1] + np.sqrt(1 - rho**2) * field[i]
    return field


def _area_mean(field: np.ndarray, area: np.ndarray) -> np.ndarray:
    return (field * area).sum(axis=(-2, -1)) / area.sum()


def simulate(scenario: str, grid: Grid, n_members: int, seed: int, table: dict | None = None,
             physics: Physics = Physics(), with_history: bool = False):
    """Inputs and outputs of one scenario as two xarray Datasets in the ClimateBench layout (an SSP from 2015,
    or from 1850 with its historical part when ``with_history``)."""
    e = scenario_emissions(scenario, table)
    f_ghg, f_aer = forcing(e, physics)
    keep = e["year"] >= (LAST_HIST + 1 if scenario.startswith("ssp") and not with_history else FIRST_YEAR)
    t_ghg = two_layer_response(f_ghg, physics.climate_feedback)[keep]
    t_aer = two_layer_response(f_aer, physics.climate_feedback)[keep]
    years = e["year"][keep]
    pattern_years = np.full_like(years, FIRST_YEAR) if scenario == "hist-GHG" else years  # aerosols frozen at 1850
    land = land_mask(grid)
    so2 = _emission_maps(grid, pattern_years, e["so2"][keep], False, land).astype(np.float32)
    bc = _emission_maps(grid, pattern_years, e["bc"][keep], True, land).astype(np.float32)
    so2_1850 = _emission_maps(grid, e["year"][:1], e["so2"][:1], False, land).astype(np.float32)

    area = cell_area(grid.lat, grid.lon)
    land = land.astype(np.float32)
    lat2 = np.broadcast_to(grid.lat[:, None], (grid.nlat, grid.nlon)).astype(np.float32)
    arctic = np.clip((lat2 - 60.0) / 20.0, 0.0, 1.0)
    amp = (1.0 + physics.land_amplification * land
           + arctic * (physics.arctic_amplification + np.tanh(t_ghg / 2.0)).astype(np.float32)[:, None, None])
    amp /= _area_mean(amp, area).astype(np.float32)[:, None, None]
    loading = _smooth(np.maximum(so2 - so2_1850, 0.0), grid).astype(np.float32)
    loading_mean = _area_mean(loading, area).astype(np.float32)[:, None, None]
    regional = np.divide(loading, loading_mean, out=np.zeros_like(loading), where=loading_mean > 0)
    col = lambda v: v.astype(np.float32)[:, None, None]  # noqa: E731  (time,) -> (time, 1, 1)
    share = physics.aerosol_global_share
    tas_forced = amp * col(t_ghg + share * t_aer) + (1 - share) * col(t_aer) * regional
    dimming = regional * col(np.abs(f_aer[keep]))

    wet = 3.0 * (1.0 + 1.5 * np.exp(-((lat2 / 10.0) ** 2))) * MM_PER_DAY  # pre-industrial pr climatology
    sigma_t = physics.variability * (0.15 + 0.35 * land + 0.6 * (lat2 / 90.0) ** 2)
    members = []
    for m in range(n_members):
        rng = np.random.default_rng([seed, SCENARIOS.index(scenario) if scenario in SCENARIOS else 99, m])
        eta = _variability(rng, grid, len(years), physics.variability_rho)  # temperature-like variability
        xi = _variability(rng, grid, len(years), physics.variability_rho)  # independent part of the hydrological variability
        tas = tas_forced + sigma_t * eta
        dtr = -0.04 * tas * (1 + land) - 0.15 * dimming + (0.1 + 0.1 * land) * (0.6 * eta + 0.8 * xi)
        pr = wet * (0.02 * tas - 0.04 * dimming + 0.05 * xi)
        pr90 = 2.5 * wet * (0.06 * tas - 0.05 * dimming + 0.04 * (0.8 * xi - 0.6 * eta))
        members.append(np.stack([tas, dtr, pr, pr90]).astype(np.float32))
    out = np.stack(members, axis=1).astype(np.float32)  # (variable, member, time, lat, lon)

    time = years.astype(np.int64)
    cum_co2 = np.cumsum(e["co2"])[keep]
    inputs = xr.Dataset(
        {
            "CO2": ("time", cum_co2, {"units": "GtCO2", "long_name": "cumulative anthropogenic CO2 emissions since 1850"}),
            "CH4": ("time", e["ch4"][keep] / 1000.0, {"units": "GtCH4 yr-1", "long_name": "anthropogenic CH4 emissions"}),
            "SO2": (("time", "latitude", "longitude"), so2,
                    {"units": "kg m-2 s-1", "long_name": "anthropogenic SO2 emission flux"}),
            "BC": (("time", "latitude", "longitude"), bc,
                   {"units": "kg m-2 s-1", "long_name": "anthropogenic black carbon emission flux"}),
        },
        coords={"time": time, "latitude": grid.lat, "longitude": grid.lon},
    )
    specs = [
        ("tas", "K", "near-surface air temperature anomaly"),
        ("diurnal_temperature_range", "K", "diurnal temperature range anomaly"),
        ("pr", "kg m-2 s-1", "precipitation anomaly"),
        ("pr90", "kg m-2 s-1", "90th percentile of daily precipitation, anomaly"),
    ]
    outputs = xr.Dataset(
        {name: (("member", "time", "lat", "lon"), out[i], {"units": u, "long_name": ln})
         for i, (name, u, ln) in enumerate(specs)},
        coords={"member": np.arange(1, n_members + 1), "time": time, "lat": grid.lat, "lon": grid.lon, "quantile": 0.9},
    )
    for ds in (inputs, outputs):
        ds.attrs.update(source="climateml synthetic ClimateBench-layout sample data (not model output)",
                        scenario=scenario, seed=seed, emissions="RCMIP v5.1.0 via fair 1.6.4")
    return inputs, outputs


def _physics(physics: str | Physics) -> Physics:
    if isinstance(physics, Physics):
        return physics
    if physics not in PHYSICS:
        raise DataError(f"unknown physics {physics!r}; choose from {sorted(PHYSICS)}")
    return PHYSICS[physics]


def _write_pair(inputs: xr.Dataset, outputs: xr.Dataset, out_dir: Path, scenario: str, suffix: str) -> list[Path]:
    written = []
    for kind, ds in (("inputs", inputs), ("outputs", outputs)):
        path = out_dir / f"{kind}_{scenario}{suffix}"
        write_dataset(ds, path)
        written.append(path)
    return written


def generate_climatebench(out_dir: str | Path, scenarios=SCENARIOS, grid: Grid = Grid(), seed: int = 0,
                          fmt: str = "netcdf", members: int | None = None, progress: bool = True,
                          physics: str | Physics = "default") -> list[Path]:
    """Write inputs_/outputs_<scenario> files for each scenario into ``out_dir``; returns the paths.

    ``physics``: a name of :data:`PHYSICS` or a :class:`Physics`, the response the files are drawn from."""
    if fmt not in ("netcdf", "zarr"):
        raise DataError(f"unknown format {fmt!r}: use 'netcdf' or 'zarr'")
    phys = _physics(physics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = read_emissions()
    suffix = ".nc" if fmt == "netcdf" else ".zarr"
    written = []
    for scenario in tqdm(list(scenarios), desc="synthesising ClimateBench scenarios", disable=not progress):
        n = members if members is not None else MEMBERS.get(scenario, 3)
        inputs, outputs = simulate(scenario, grid, n, seed, table, phys)
        if isinstance(physics, str):
            for ds in (inputs, outputs):
                ds.attrs["physics"] = physics
        written += _write_pair(inputs, outputs, out_dir, scenario, suffix)
    return written


#: years of :func:`generate_record`: a 140-year record, the last 40 years held out
RECORD_YEARS, RECORD_SPLIT = (1961, 2100), 2061


def generate_record(out_dir: str | Path, scenario: str = "ssp245", years: tuple[int, int] = RECORD_YEARS,
                    split_year: int = RECORD_SPLIT, seed: int = 0, physics: str | Physics = "default") -> list[Path]:
    """A record where only the global mean is known, like an observed one: a 1 x 1 grid, one member, one
    scenario (with its historical part) over ``years`` (inclusive), split in time into the scenarios
    ``record_train`` (before ``split_year``) and ``record_test`` (from ``split_year`` on), in the
    ClimateBench layout. Train on ``record_train``, test on ``record_test``."""
    first, last = years
    if not first < split_year <= last:
        raise DataError(f"split_year {split_year} must lie in ({first}, {last}]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs, outputs = simulate(scenario, Grid(1, 1), 1, seed, read_emissions(), _physics(physics), with_history=True)
    written = []
    for name, (a, b) in (("record_train", (first, split_year - 1)), ("record_test", (split_year, last))):
        pair = [ds.sel(time=slice(a, b)) for ds in (inputs, outputs)]
        for ds in pair:
            ds.attrs.update(scenario=name, record_of=scenario)
        written += _write_pair(*pair, out_dir, name, ".nc")
    return written
