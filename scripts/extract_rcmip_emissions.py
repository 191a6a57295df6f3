"""Rebuild climateml/data/synthetic/rcmip_emissions.csv from the RCMIP files shipped in fair 1.6.4.

Usage (needs network access to PyPI once; the CSV it writes is committed):

    pip download --no-deps fair==1.6.4 -d /tmp/fair && cd /tmp/fair && unzip -q fair-1.6.4-py3-none-any.whl
    python scripts/extract_rcmip_emissions.py /tmp/fair/fair/SSPs/data/rcmip-emissions-annual-means-5-1-0-ssp-only.csv

It keeps global (World) emissions of CO2, CH4, SO2 and BC for 1850-2100 from the SSP marker
scenarios used by ClimateBench, takes the shared historical part (1850-2014) once, and fills the
5-yearly SSP values to yearly by linear interpolation, as ClimateBench does.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

MARKERS = {  # the integrated assessment model that produced each SSP marker scenario
    "ssp126": "IMAGE",
    "ssp245": "MESSAGE-GLOBIOM",
    "ssp370": "AIM/CGE",
    "ssp585": "REMIND-MAGPIE",
}
VARIABLES = {  # RCMIP variable -> (column, conversion to the CSV's unit)
    "Emissions|CO2": ("co2_GtCO2_per_yr", 1e-3),  # Mt CO2/yr -> Gt CO2/yr
    "Emissions|CH4": ("ch4_MtCH4_per_yr", 1.0),
    "Emissions|Sulfur": ("so2_MtSO2_per_yr", 1.0),
    "Emissions|BC": ("bc_MtBC_per_yr", 1.0),
}
FIRST_YEAR, LAST_HIST, LAST_YEAR = 1850, 2014, 2100


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    col = {y: header.index(str(y)) for y in range(FIRST_YEAR, LAST_YEAR + 1)}
    series: dict[tuple[str, str], np.ndarray] = {}
    for row in rows[1:]:
        model, scenario, region, variable = row[:4]
        if region != "World" or variable not in VARIABLES or MARKERS.get(scenario) != model:
            continue
        years = np.arange(FIRST_YEAR, LAST_YEAR + 1)
        raw = np.array([float(row[col[y]]) if row[col[y]] else np.nan for y in years])
        known = ~np.isnan(raw)
        series[(scenario, variable)] = np.interp(years, years[known], raw[known])
    out = Path(dst)
    with out.open("w", newline="") as f:
        f.write("# Global anthropogenic emissions, RCMIP v5.1.0 (Nicholls et al. 2020, doi:10.5194/gmd-13-5175-2020),\n")
        f.write("# as shipped in the PyPI package fair==1.6.4 (Apache-2.0) under fair/SSPs/data/.\n")
        f.write("# RCMIP data are CC-BY-4.0. SSP marker scenarios; 5-yearly values after 2015 linearly interpolated to yearly.\n")
        f.write("# Rebuilt by scripts/extract_rcmip_emissions.py.\n")
        w = csv.writer(f)
        w.writerow(["scenario", "year"] + [c for c, _ in VARIABLES.values()])
        years = np.arange(FIRST_YEAR, LAST_YEAR + 1)
        for scenario in ["historical", *MARKERS]:
            src_scen = "ssp245" if scenario == "historical" else scenario
            sel = years <= LAST_HIST if scenario == "historical" else years > LAST_HIST
            for i in np.flatnonzero(sel):
                vals = [series[(src_scen, v)][i] * k for v, (_, k) in VARIABLES.items()]
                w.writerow([scenario, years[i]] + [f"{x:.6g}" for x in vals])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "climateml/data/synthetic/rcmip_emissions.csv")
