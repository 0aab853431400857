"""Step `probe` of the GPU run: versions, the device, and every CUDA kernel of the project as the
driver reports it.

    python -m rosetta.bench.gpu_probe --out DIR        # writes DIR/probe.json, section by section

Sections (each written as soon as it is known, so a crash or timeout keeps the earlier ones):

- ``versions``: python, numpy, torch (+ its CUDA, cuDNN), cupy, the CUDA runtime and driver CuPy
  sees, NVRTC, hypothesis, and nvidia-smi's line for the device.
- ``device``: name, compute capability, SM count, memory, per-SM limits (threads, registers, shared
  memory); or ``status: skipped: no CUDA device``.
- ``kernel_files``: every ``*.cu`` file in the kernels folder (found, not listed here), each with
  - on the GPU: the time cupy.RawModule took to compile and load it through NVRTC (``compile_s``;
    ``cache`` says whether CuPy's on-disk cache already held it: ``cold`` is a real compile), and
    each kernel it defines (the driver's own list, cuModuleEnumerateFunctions) with the attributes
    CuPy reports (registers, static shared memory, local memory = spills, max threads per block,
    PTX/binary version) and the occupancy the driver computes
    (cuOccupancyMaxActiveBlocksPerMultiprocessor) at 64, 128 and 256 threads and at the block size
    the launchers use (``launch_block``), plus cuOccupancyMaxPotentialBlockSize;
  - without a GPU: NVRTC's time to compile it to PTX (through ctypes, no CuPy) and the kernels the
    PTX defines (``.entry`` lines).

The compiled kernels stay in CuPy's disk cache, so the steps after this one do not compile them again.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from . import common

ROOT = Path(__file__).resolve().parents[2]
BLOCK_SIZES = (64, 128, 256)


def _write(document: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "probe.json.tmp"
    partial.write_text(json.dumps(document, indent=1, default=str) + "\n")
    partial.replace(out / "probe.json")


def _error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def versions() -> dict:
    """common.versions() plus what only a CUDA machine can say (None where it cannot)."""
    found = common.versions()
    found.update(cudnn=None, cuda_runtime=None, cuda_driver=None, nvrtc=None, hypothesis=None, nvidia_smi=None)
    try:
        import hypothesis

        found["hypothesis"] = hypothesis.__version__
    except ImportError:
        pass
    try:
        import torch

        found["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a version we cannot read stays None
        pass
    try:
        import cupy

        found["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        found["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        found["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception:  # noqa: BLE001
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        found["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        found["nvidia_smi"] = f"unavailable: {_error(error)}"
    return found


def cuda_device_count() -> int:
    """CUDA devices the driver sees (0 without a driver): ctypes, no CuPy or torch needed."""
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if library.cuInit(0) != 0 or library.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def device() -> dict:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    keys = ("multiProcessorCount", "totalGlobalMem", "maxThreadsPerMultiProcessor", "maxThreadsPerBlock",
            "sharedMemPerBlock", "sharedMemPerBlockOptin", "sharedMemPerMultiprocessor", "regsPerMultiprocessor",
            "regsPerBlock", "warpSize", "l2CacheSize", "clockRate", "memoryClockRate", "memoryBusWidth")
    found = {"status": "ok", "name": name, "compute_capability": f"{props['major']}.{props['minor']}",
             "sm_count": props["multiProcessorCount"], "memory_gib": round(props["totalGlobalMem"] / 2**30, 2)}
    found.update({key: props.get(key) for key in keys})
    free, total = cupy.cuda.Device(0).mem_info
    found["memory_free_gib"] = round(free / 2**30, 2)
    return found


# ---- the kernel files -----------------------------------------------------------------------------

def nvrtc_module():
    """accelerated/cupy/nvrtc.py, without the package's GPU check (it imports no CuPy itself)."""
    from accelerated.cupy_emulator import cupy_file

    return cupy_file("nvrtc")


def kernel_files() -> list:
    """Every .cu file of the kernels folder nvrtc.py compiles from (headers are included by them)."""
    folder = Path(getattr(nvrtc_module(), "KERNEL_DIR", ROOT / "accelerated" / "cupy" / "kernels"))
    return sorted(folder.glob("*.cu"))


_ENTRY = re.compile(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\(")


def ptx_entries(ptx: str) -> list:
    """The kernel names a PTX text defines (its .entry directives), in order."""
    return _ENTRY.findall(ptx)


def ptx_compile(path: Path) -> dict:
    """NVRTC (ctypes, no GPU) compiling ``path`` to PTX: seconds and the kernels it defines."""
    nvrtc = nvrtc_module()
    start = time.perf_counter()
    try:
        ptx = nvrtc.compile_ptx(path.read_text(), path.name)
    except Exception as error:  # noqa: BLE001 - a file that does not compile is a finding
        return {"ptx_status": f"failed: {_error(error)}", "ptx_compile_s": round(time.perf_counter() - start, 3)}
    return {"ptx_status": "ok", "ptx_compile_s": round(time.perf_counter() - start, 3), "ptx_entries": ptx_entries(ptx)}


def driver_function_names(module_handle: int) -> list:
    """The kernels a loaded CUmodule holds, as the driver lists them (CUDA 12.4+)."""
    library = ctypes.CDLL("libcuda.so.1")
    handle = ctypes.c_void_p(module_handle)
    count = ctypes.c_uint(0)
    _check(library.cuModuleGetFunctionCount(ctypes.byref(count), handle), "cuModuleGetFunctionCount")
    functions = (ctypes.c_void_p * count.value)()
    _check(library.cuModuleEnumerateFunctions(functions, count, handle), "cuModuleEnumerateFunctions")
    names = []
    for function in functions:
        name = ctypes.c_char_p()
        _check(library.cuFuncGetName(ctypes.byref(name), ctypes.c_void_p(function)), "cuFuncGetName")
        names.append(name.value.decode())
    return sorted(names)


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} returned CUresult {status}")


def launch_block(name: str) -> int | None:
    """The threads per block the launchers give kernel ``name`` (their constants; None if unknown)."""
    try:
        from accelerated.cupy import flash_attention_kernels as fk
        from accelerated.cupy import fused_kernels as fused
    except Exception:  # noqa: BLE001
        return None
    if name.startswith("flash_"):
        return getattr(fk, "CONVERT_THREADS", None) if "convert" in name else getattr(fk, "THREADS", None)
    return getattr(fused, "THREADS", None)


def _cache_files() -> set:
    folder = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache"))
    return set(p.name for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else set()


def gpu_kernels(path: Path, max_threads_per_sm: int) -> dict:
    """Compile ``path`` through cupy.RawModule (NVRTC) and describe each kernel it defines."""
    import cupy
    from cupy.cuda import driver

    from accelerated.cupy import nvrtc

    before = _cache_files()
    start = time.perf_counter()
    module = nvrtc.raw_module(path)
    compile_s = time.perf_counter() - start
    record = {"compile_s": round(compile_s, 3), "cache": "cold" if _cache_files() - before else "hit"}
    try:
        names = driver_function_names(module.module.ptr)
        record["names_from"] = "driver (cuModuleEnumerateFunctions)"
    except Exception as error:  # noqa: BLE001 - an older driver: the PTX's entries instead
        record["driver_enumeration"] = f"failed: {_error(error)}"
        names = ptx_compile(path).get("ptx_entries", [])
        record["names_from"] = "PTX .entry lines (NVRTC via ctypes)"
    kernels = {}
    for name in names:
        try:
            kernel = module.get_function(name)
            attributes = dict(kernel.attributes)
            pointer = kernel.kernel.ptr
            occupancy = {}
            block = launch_block(name)
            for size in sorted(set(BLOCK_SIZES) | ({block} if block else set())):
                if size > attributes["max_threads_per_block"]:
                    occupancy[str(size)] = None
                    continue
                blocks = driver.occupancyMaxActiveBlocksPerMultiprocessor(pointer, size, 0)
                occupancy[str(size)] = {"blocks_per_sm": blocks, "warps_per_sm": blocks * size // 32,
                                        "occupancy": round(blocks * size / max_threads_per_sm, 3)}
            min_grid, best_block = driver.occupancyMaxPotentialBlockSize(pointer, 0, 0)
            kernels[name] = {**attributes, "launch_block": block, "occupancy": occupancy,
                             "launch_occupancy": (occupancy.get(str(block)) or {}).get("occupancy") if block else None,
                             "max_potential_block": best_block, "min_grid_for_max_occupancy": min_grid}
        except Exception as error:  # noqa: BLE001
            kernels[name] = {"status": f"failed: {_error(error)}"}
    record["kernels"] = kernels
    cupy.cuda.Device().synchronize()
    return record


def summary_line(document: dict) -> str:
    files = document.get("kernel_files", [])
    kernels = [k for f in files for k in (f.get("kernels") or {}).values() if "num_regs" in k]
    names = sum(len(f.get("kernels") or f.get("ptx_entries") or []) for f in files)
    failed = [f["file"] for f in files if str(f.get("status", "ok")).startswith("failed")]
    dev = document.get("device", {})
    where = dev.get("name") if dev.get("status") == "ok" else "no CUDA device"
    text = f"{where}; {len(files)} kernel files, {names} kernels"
    if kernels:
        text += (f"; registers {min(k['num_regs'] for k in kernels)}–{max(k['num_regs'] for k in kernels)}, "
                 f"spills (local bytes) max {max(k['local_size_bytes'] for k in kernels)}")
        compile_s = [f["compile_s"] for f in files if "compile_s" in f]
        text += f"; NVRTC compile {sum(compile_s):.1f} s in all"
    elif files:
        text += f"; NVRTC→PTX {sum(f.get('ptx_compile_s', 0) for f in files):.1f} s in all"
    if failed:
        text += f"; FAILED: {', '.join(failed)}"
    return text


def run(out: Path, gpu: bool | None = None) -> int:
    """Write ``out``/probe.json; exit status 1 when a kernel file failed to compile or load."""
    document = {"schema_version": common.SCHEMA_VERSION, "suite": "gpu_probe", "status": "running",
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    document["versions"] = versions()
    _write(document, out)
    gpu = cuda_device_count() > 0 if gpu is None else gpu
    if gpu:
        try:
            document["device"] = device()
        except Exception as error:  # noqa: BLE001
            document["device"] = {"status": f"failed: {_error(error)}"}
            gpu = False
    else:
        document["device"] = {"status": "skipped: no CUDA device"}
    document["kernel_files"] = []
    _write(document, out)
    failed = False
    for path in kernel_files():
        entry = {"file": path.name, "bytes": path.stat().st_size}
        try:
            if gpu:
                entry.update(gpu_kernels(path, document["device"]["maxThreadsPerMultiProcessor"]))
            else:
                entry.update(ptx_compile(path), gpu="skipped: no CUDA device")
                if entry["ptx_status"] != "ok" and "no NVRTC library" not in entry["ptx_status"]:
                    entry["status"] = entry["ptx_status"]
            entry.setdefault("status", "ok")
        except Exception as error:  # noqa: BLE001 - one file's failure is recorded; the others still run
            entry["status"] = f"failed: {_error(error)}"
        failed |= entry["status"].startswith("failed")
        document["kernel_files"].append(entry)
        print(f"{path.name}: {entry.get('status')} "
              f"({entry.get('compile_s', entry.get('ptx_compile_s'))} s, "
              f"{len(entry.get('kernels') or entry.get('ptx_entries') or [])} kernels)", flush=True)
        _write(document, out)
    document["status"] = "failed" if failed else "ok"
    document["summary"] = summary_line(document)
    _write(document, out)
    print(document["summary"], flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rosetta.bench.gpu_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".", help="folder for probe.json")
    parser.add_argument("--no-gpu", action="store_true",
                        help="the CPU part only, even on a GPU machine (also with ROSETTA_GPU_RUN_NO_GPU=1)")
    args = parser.parse_args(argv)
    no_gpu = args.no_gpu or os.environ.get("ROSETTA_GPU_RUN_NO_GPU") == "1"  # gpu_run --dry-run sets it
    return run(Path(args.out), gpu=False if no_gpu else None)


if __name__ == "__main__":
    sys.exit(main())
