"""Nowcasting baselines: persistence and optical-flow extrapolation, batched, scored like the model.

Frames are rain rates [mm/h] shaped (..., time, y, x): a torch tensor, a numpy array, or an
``xarray.DataArray`` whose last three dims are (time, <row dim>, <column dim>). Outputs have the same
type, shaped (..., lead_time, y, x); a DataArray gets a ``lead_time`` coordinate (multiples of the input
time step) and the last input time as scalar ``time`` (the forecast reference time).

Motion is in grid cells per time step along the array axes: ``flow[..., 0, :, :]`` = u, along columns
(x index), ``flow[..., 1, :, :]`` = v, along rows (y index; with a descending y coordinate a positive v
means moving south). This is pysteps' convention too.

Our motion estimate is a coarse-to-fine (pyramid) Lucas-Kanade least-squares fit on log(1 + R):
at each level, frame t+1 is warped back by the current flow, the structure tensor of the spatial
gradients and the temporal residual is summed over all consecutive pairs of past frames (the motion is
assumed the same for all of them) and over a Gaussian window, and the 2 x 2 system is solved per pixel
with Tikhonov damping, so texture-less (dry) areas keep the motion of the coarser level. The result is
smoothed. Extrapolation is backward semi-Lagrangian: each lead follows the trajectory back along the
(steady) flow with a midpoint rule and interpolates the last frame bilinearly (NaN-aware).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

PYSTEPS_AVAILABLE = importlib.util.find_spec("pysteps") is not None
METHODS = ("lucas-kanade", "pysteps") if PYSTEPS_AVAILABLE else ("lucas-kanade",)


# --------------------------------------------------------------------------------------- type plumbing
def _to_tensor(frames) -> tuple[torch.Tensor, dict]:
    """(tensor (..., T, H, W) as float, how to give the result back in the caller's type)."""
    if isinstance(frames, xr.DataArray):
        return torch.as_tensor(np.asarray(frames.values)), {"kind": "xarray", "da": frames}
    if isinstance(frames, torch.Tensor):
        return frames, {"kind": "torch"}
    array = np.asarray(frames)
    tensor = torch.as_tensor(array if array.flags.writeable else array.copy())
    return tensor, {"kind": "numpy", "dtype": array.dtype}


def _from_tensor(out: torch.Tensor, how: dict):
    if how["kind"] == "torch":
        return out
    if how["kind"] == "numpy":
        return out.cpu().numpy().astype(how["dtype"], copy=False)
    da: xr.DataArray = how["da"]
    tdim, rdim, cdim = da.dims[-3:]
    n_out = out.shape[-3]
    coords = {d: da.coords[d] for d in da.dims if d != tdim and d in da.coords and da.coords[d].dims == (d,)}
    dims = (*da.dims[:-3], "lead_time", rdim, cdim)
    result = xr.DataArray(out.cpu().numpy(), dims=dims, coords=coords, name=da.name, attrs=da.attrs)
    if tdim in da.coords and da[tdim].ndim == 1 and da.sizes[tdim] >= 2:
        times = da[tdim].values
        step = times[-1] - times[-2]
        result = result.assign_coords(lead_time=("lead_time", step * np.arange(1, n_out + 1)), **{tdim: times[-1]})
    else:
        result = result.assign_coords(lead_time=("lead_time", np.arange(1, n_out + 1)))
    return result


# --------------------------------------------------------------------------------------- persistence
def persistence(frames, n_out: int):
    """The last input frame repeated ``n_out`` times: (..., time, y, x) -> (..., lead_time, y, x)."""
    x, how = _to_tensor(frames)
    out = x[..., -1:, :, :].expand(*x.shape[:-3], n_out, *x.shape[-2:]).clone()
    return _from_tensor(out, how)


# --------------------------------------------------------------------------------------- image helpers
def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) along H and W, standard deviation ``sigma`` cells, edges replicated."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences along columns and rows of (N, C, H, W), one-sided at the edges."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def _base_grid(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates (2, H, W): column index, row index."""
    rows, cols = torch.meshgrid(torch.arange(h, dtype=like.dtype, device=like.device),
                                torch.arange(w, dtype=like.dtype, device=like.device), indexing="ij")
    return torch.stack([cols, rows])


def _sample(img: torch.Tensor, coords: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Bilinear samples of img (N, C, H, W) at pixel coords (N, 2, H', W') (column, row)."""
    h, w = img.shape[-2:]
    gx = 2 * coords[:, 0] / max(w - 1, 1) - 1
    gy = 2 * coords[:, 1] / max(h - 1, 1) - 1
    return F.grid_sample(img, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode=padding,
                         align_corners=True)


def _inside(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return (coords[:, 0] >= 0) & (coords[:, 0] <= w - 1) & (coords[:, 1] >= 0) & (coords[:, 1] <= h - 1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (..., H, W) along H and W, standard deviation ``sigma`` cells, edges replicated."""
    shape = x.shape
    return _blur(x.reshape(-1, 1, *shape[-2:]), sigma).reshape(shape)


# --------------------------------------------------------------------------------------- motion
def estimate_motion(
    frames,
    window_sigma: float = 4.0,
    iterations: int = 3,
    damping: float = 1e-2,
    smooth_sigma: float = 2.0,
    presmooth_sigma: float = 1.0,
    min_level_size: int = 8,
    max_levels: int | None = None,
    max_increment: float = 1.0,
):
    """Motion (..., 2, y, x) [grid cells per time step; u along columns, v along rows] from past frames.

    Pyramid Lucas-Kanade on log(1 + R) (module docstring). ``window_sigma`` [cells] is the least-squares
    window at every level; ``damping`` the Tikhonov term relative to the mean gradient energy (larger:
    smoother, more of the coarse motion kept); ``smooth_sigma`` [cells] the final smoothing; the pyramid
    halves the grid until its smaller side would drop below ``min_level_size`` cells.
    """
    x, how = _to_tensor(frames)
    lead = x.shape[:-3]
    t, h, w = x.shape[-3:]
    if t < 2:
        raise ValueError(f"motion needs at least 2 frames, got {t}")
    work = x.reshape(-1, t, h, w).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    # NaN (outside the radar range) is no data, not zero rain: its neighbourhood gets no weight, so the
    # static edge of the radar disc does not pull the motion towards zero or beyond the true speed
    reach = int(math.ceil(3 * presmooth_sigma)) + 1
    known = 1.0 - F.max_pool2d(torch.isnan(work).to(work.dtype), 2 * reach + 1, stride=1, padding=reach)
    work = _blur(torch.log1p(torch.nan_to_num(work, nan=0.0).clamp(min=0)), presmooth_sigma)
    pyramid = [(work, known)]
    while min(pyramid[-1][0].shape[-2:]) // 2 >= min_level_size and (max_levels is None or len(pyramid) < max_levels):
        level, mask = pyramid[-1]
        size = ((level.shape[-2] + 1) // 2, (level.shape[-1] + 1) // 2)
        pyramid.append((_resize(_blur(level, 1.0), size), -F.max_pool2d(-_resize(mask, size), 3, stride=1, padding=1)))
    flow = torch.zeros(work.shape[0], 2, *pyramid[-1][0].shape[-2:], dtype=work.dtype, device=work.device)
    for level, mask in reversed(pyramid):
        lh, lw = level.shape[-2:]
        if flow.shape[-2:] != (lh, lw):
            fh, fw = flow.shape[-2:]
            flow = _resize(flow, (lh, lw))
            flow = flow * torch.tensor([(lw - 1) / max(fw - 1, 1), (lh - 1) / max(fh - 1, 1)],
                                       dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)
        flow = _lucas_kanade_level(level, (mask > 0.999).to(level.dtype), flow, window_sigma, iterations, damping,
                                   max_increment)
    flow = _blur(flow, smooth_sigma)
    flow = flow.reshape(*lead, 2, h, w)
    return flow if how["kind"] == "torch" else flow.cpu().numpy()  # an array: the flow has no time dim


def _lucas_kanade_level(frames: torch.Tensor, known: torch.Tensor, flow: torch.Tensor, window_sigma: float,
                        iterations: int, damping: float, max_increment: float) -> torch.Tensor:
    """Refine ``flow`` (N, 2, H, W) on one pyramid level from frames (N, T, H, W); ``known`` (N, T, H, W)
    is 1 where a frame's value and its gradient rest on data, 0 near NaN."""
    n, t, h, w = frames.shape
    first, second = frames[:, :-1], frames[:, 1:]  # (N, P, H, W) pairs
    grid = _base_grid(h, w, frames).unsqueeze(0)
    g0x, g0y = _gradients(first)
    start = flow
    for _ in range(iterations):
        coords = grid + flow
        warped = _sample(second, coords, padding="border")
        valid = _inside(coords, h, w).unsqueeze(1).to(frames.dtype) * known[:, :-1]
        valid = valid * (_sample(known[:, 1:], coords) > 0.999).to(frames.dtype)
        g1x, g1y = _gradients(warped)
        gx, gy = 0.5 * (g0x + g1x) * valid, 0.5 * (g0y + g1y) * valid
        it = (warped - first) * valid
        terms = torch.stack([(gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1), (gx * it).sum(1), (gy * it).sum(1)], 1)
        a11, a12, a22, b1, b2 = _blur(terms, window_sigma).unbind(1)
        lam = damping * 0.5 * (a11 + a22).mean(dim=(-2, -1), keepdim=True) + torch.finfo(frames.dtype).tiny ** 0.5
        a11, a22 = a11 + lam, a22 + lam
        det = a11 * a22 - a12 * a12
        du = -(a22 * b1 - a12 * b2) / det
        dv = -(a11 * b2 - a12 * b1) / det
        step = torch.stack([du, dv], 1)
        total = (flow + step - start)
        # a pyramid level only refines the coarser estimate: at most max_increment cells
        scale = (max_increment / torch.linalg.vector_norm(total, dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
        flow = start + total * scale
    return flow


# --------------------------------------------------------------------------------------- advection
def advect(field, flow, n_out: int, fill_value: float = float("nan")):
    """Backward semi-Lagrangian extrapolation of ``field`` (..., y, x) along a steady ``flow``
    (..., 2, y, x) [cells per step]: (..., lead_time, y, x). Bilinear and NaN-aware (a point takes NaN
    data into account only if more than half of its interpolation weight is valid); points whose
    trajectory starts outside the grid or in NaN get ``fill_value``."""
    f, how = _to_tensor(field)
    v = flow if isinstance(flow, torch.Tensor) else torch.tensor(np.asarray(flow))
    lead = f.shape[:-2]
    h, w = f.shape[-2:]
    f = f.reshape(-1, 1, h, w)
    dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
    f = f.to(dtype)
    v = v.reshape(-1, 2, h, w).to(dtype=dtype, device=f.device)
    valid = (~torch.isnan(f)).to(dtype)
    filled = torch.nan_to_num(f, nan=0.0)
    grid = _base_grid(h, w, f).unsqueeze(0)
    displacement = torch.zeros_like(v)
    out = []
    for _ in range(n_out):
        here = _sample(v, grid - displacement, padding="border")
        mid = _sample(v, grid - displacement - 0.5 * here, padding="border")
        displacement = displacement + mid
        coords = grid - displacement
        weight = _sample(valid, coords)
        value = _sample(filled, coords) / weight.clamp(min=1e-12)
        ok = (weight > 0.5) & _inside(coords, h, w).unsqueeze(1)
        out.append(torch.where(ok, value, torch.full_like(value, fill_value)))
    result = torch.cat(out, 1).reshape(*lead, n_out, h, w)
    if how["kind"] == "xarray":
        return result.cpu().numpy()
    return _from_tensor(result, how)


# --------------------------------------------------------------------------------------- nowcast
def optical_flow_nowcast(frames, n_out: int, method: str = "lucas-kanade", fill_value: float = float("nan"),
                         pysteps_motion: str = "LK", **motion_kwargs):
    """Extrapolation nowcast (..., time, y, x) -> (..., lead_time, y, x) [mm/h]: motion from all past
    frames, then semi-Lagrangian advection of the last one. ``method="pysteps"`` (when installed) uses
    pysteps' ``pysteps_motion`` estimator and its semi-Lagrangian scheme instead, for cross-checks."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}"
                         + ("" if PYSTEPS_AVAILABLE else " (pysteps is not installed)"))
    x, how = _to_tensor(frames)
    lead = x.shape[:-3]
    t, h, w = x.shape[-3:]
    batch = x.reshape(-1, t, h, w)
    if method == "pysteps":
        out = torch.as_tensor(np.stack([_pysteps_nowcast(s, n_out, fill_value, pysteps_motion)
                                        for s in batch.cpu().numpy()]))
    else:
        flow = estimate_motion(batch, **motion_kwargs)
        out = advect(batch[:, -1], flow, n_out, fill_value=fill_value)
    return _from_tensor(out.reshape(*lead, n_out, h, w).to(x.dtype if x.is_floating_point() else torch.float32), how)


def _pysteps_nowcast(frames: np.ndarray, n_out: int, fill_value: float, motion: str) -> np.ndarray:
    """One sample (T, H, W) -> (n_out, H, W) with pysteps (motion on the same log(1 + R) as ours)."""
    from pysteps import extrapolation, motion as pysteps_motion  # noqa: PLC0415 (optional dependency)

    values = np.log1p(np.nan_to_num(frames.astype(np.float64), nan=0.0).clip(min=0))
    velocity = pysteps_motion.get_method(motion)(values)
    return np.asarray(extrapolation.get_method("semilagrangian")(
        frames[-1].astype(np.float64), velocity, n_out, outval=fill_value))


def pysteps_motion_field(frames, motion: str = "LK") -> np.ndarray:
    """pysteps' motion (2, y, x) [cells per step] for one sample (time, y, x), on log(1 + R) like ours."""
    if not PYSTEPS_AVAILABLE:
        raise ImportError("pysteps is not installed")
    from pysteps import motion as pysteps_motion  # noqa: PLC0415

    values = np.log1p(np.nan_to_num(np.asarray(frames, np.float64), nan=0.0).clip(min=0))
    return np.asarray(pysteps_motion.get_method(motion)(values))
