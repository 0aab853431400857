"""The CUDA host emulator: the CuPy backend and its kernels, run on a CPU.

Without a GPU, ``accelerated.cupy`` refuses to import. The emulator lets a reader run it anyway
and step through its kernels with an ordinary debugger:

    from accelerated.cupy_emulator import emulated_cupy

    with emulated_cupy() as rt:          # the real accelerated.cupy namespace over a stand-in cupy
        layer = rt.MultiHeadAttention(64, 4, dtype="float32", seed=0)
        y = layer(rt.asarray(x, dtype="float32"))   # the flash-attention kernel runs on the CPU

Two parts, beside this file:

- ``host.py`` + ``host_runtime.h``: g++ compiles the unmodified ``kernels/*.cu`` as host C++
  (the header supplies CUDA's built-ins) and launches them with a cupy-like API. Each CUDA thread
  of a block is a fiber; ``__syncthreads``, warp shuffles, ``mma.sync``, ``ldmatrix`` and
  ``cp.async`` are emulated; shared memory and every output buffer start poisoned (NaN bytes),
  guard zones catch out-of-bounds writes, and the order in which waiting threads resume is a
  parameter, so a missing barrier changes the result.
- ``emulated_cupy.py``: a stand-in ``cupy`` module (NumPy arrays, ``RawModule`` backed by the
  emulator) under which ``accelerated/cupy/backend.py`` builds its namespace: the launchers'
  argument packing, grids and dtype routes are the real ones. ``count_operations`` counts the
  array operations and kernel launches a training step makes (the ``dispatch`` benchmark).

What it models: the CUDA execution model inside a block, the kernels' arithmetic (float32,
float16 and bfloat16 through CUDA's own host conversions), and undefined behaviour CUDA would
leave silent (divergent barriers, partial-warp collectives, deadlock, writes out of bounds).
What it does not: speed, concurrency between blocks, the GPU memory model (every write is seen
at once), alignment faults, and ``cp.async`` ordering (its copies are synchronous). Those need
a real GPU run (``rosetta/bench/gpu_session.sh``).

Its files import relatively: they are loaded as part of ``accelerated/cupy/``'s files under the
name ``accelerated.cupy_emulator`` gives them (the package's own ``__init__`` needs a GPU).
"""
