"""Benchmark: our 2-D Haar DWT -> IDWT (forward + backward) against pytorch_wavelets and ptwt.

    pip install -e ".[bench]"          # pytorch_wavelets and ptwt
    python scripts/bench_wavelets.py [--repeats 20] [--output docs/benchmarks_wavelets.md]

Each implementation runs DWT then IDWT on the same tensor, then a backward pass of the sum of the
reconstruction, and its outputs are checked against ours (same coefficients, up to the sign
conventions of each library, and the same reconstruction). On CPU: haar on 16x64x64x64 float32.
On a CUDA GPU, where present: 64x128x64x64 in float32 and bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spectral_diffusion.networks.wavelets import dwt2_stacked, idwt2_stacked


def ours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    bands = dwt2_stacked(x, "haar")
    return bands, idwt2_stacked(bands, "haar")


def make_pytorch_wavelets(device: torch.device) -> Callable | None:
    try:
        from pytorch_wavelets import DWTForward, DWTInverse
    except Exception as err:  # missing, or its pkg_resources import fails
        print(f"pytorch_wavelets unavailable: {err}", file=sys.stderr)
        return None
    fwd = DWTForward(J=1, wave="haar", mode="periodization").to(device)
    inv = DWTInverse(wave="haar", mode="periodization").to(device)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = fwd(x)
        rec = inv((low, high))
        return torch.cat([low[:, None], high[0].transpose(1, 2)], dim=1), rec

    return run


def make_ptwt() -> Callable | None:
    try:
        import ptwt
    except Exception as err:
        print(f"ptwt unavailable: {err}", file=sys.stderr)
        return None

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # ptwt has no periodization mode; for Haar on even sizes every mode gives the same result.
        coeffs = ptwt.wavedec2(x, "haar", level=1, mode="zero")
        rec = ptwt.waverec2(coeffs, "haar")
        low, (h, v, d) = coeffs[0], coeffs[1]
        return torch.stack([low, h, v, d], dim=1), rec

    return run


def time_interleaved(fns: dict[str, Callable], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of DWT -> IDWT -> backward per implementation, after warm-up.

    The implementations take turns within every repeat, so that load from elsewhere on a shared
    machine hits them all alike.
    """

    def once(fn: Callable) -> float:
        xg = x.detach().requires_grad_(True)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, rec = fn(xg)
        rec.float().sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():
        for _ in range(3):
            once(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def agreement(fn: Callable, x: torch.Tensor) -> str:
    """Max abs difference to our coefficients (each band up to sign) and reconstruction."""
    with torch.no_grad():
        ref_bands, ref_rec = ours(x)
        bands, rec = fn(x)
        band_err = max(min((bands[:, i] - s * ref_bands[:, i]).abs().max().item() for s in (1, -1)) for i in range(4))
        rec_err = (rec[..., : x.shape[-2], : x.shape[-1]] - ref_rec).abs().max().item()
    return f"{band_err:.1e} / {rec_err:.1e}"


def bench(device: torch.device, shape: tuple[int, ...], dtype: torch.dtype, repeats: int) -> list[str]:
    x = torch.randn(shape, device=device, dtype=dtype)
    candidates = {"ours (haar fast path)": ours, "pytorch_wavelets": make_pytorch_wavelets(device), "ptwt": make_ptwt()}
    working, results = {}, {}
    for name, fn in candidates.items():
        if fn is None:
            continue
        try:
            working[name] = fn
            results[name] = (float("nan"), agreement(fn, x) if fn is not ours else "-")
        except Exception as err:  # e.g. a library without bf16 support
            working.pop(name)
            results[name] = (float("nan"), f"failed: {type(err).__name__}: {str(err)[:60]}")
    for name, seconds in time_interleaved(working, x, repeats).items():
        results[name] = (seconds, results[name][1])
    base = results["ours (haar fast path)"][0]
    rows = []
    for name, (seconds, agree) in results.items():
        speedup = seconds / base if seconds == seconds else float("nan")
        rows.append(
            f"| {device.type} | {'x'.join(map(str, shape))} | {str(dtype).removeprefix('torch.')} | {name} "
            f"| {seconds * 1e3:.2f} | {speedup:.2f}x | {agree} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None, help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    header = [
        "| device | shape | dtype | implementation | ms (DWT+IDWT, fwd+bwd) | time vs ours | max diff bands / recon |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = bench(torch.device("cpu"), (16, 64, 64, 64), torch.float32, args.repeats)
    if torch.cuda.is_available():
        for dtype in (torch.float32, torch.bfloat16):
            rows += bench(torch.device("cuda"), (64, 128, 64, 64), dtype, args.repeats)
    table = "\n".join(header + rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
