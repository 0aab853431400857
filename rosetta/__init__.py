"""Rosetta Transformer, the application: the ``rosetta`` command line and what it drives.

    cli.py          the ``rosetta`` command (train, decode, plot-attention, gradcheck, info, bench)
    train.py        the training driver: presets, the loop, scoring by greedy decoding, plots
    tasks.py        the synthetic tasks (copy, reverse, sort) and their vocabulary
    checkpoint.py   safetensors checkpoints: written atomically, checked on load
    interop.py      weights from torch.nn's Transformer modules into Rosetta modules
    hf/             Hugging Face checkpoint folders (BERT, GPT-2, Llama, Mistral, Qwen2, Marian) in and out
    bench/          the benchmark suites (``rosetta bench``, ``python -m rosetta.bench``)

It sits on top: it may import ``accelerated`` and ``reference``; neither imports it.
"""
