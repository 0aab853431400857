"""The backends export the reference's API: the same names, with the same signatures.

``import reference as rt`` / ``import accelerated.torch as rt`` / ``import accelerated.cupy as rt``
must run the same user code, so every name of ``reference.__all__`` exists in each backend
with the same parameters (names, kinds, defaults; annotations are free), each class has the
same forward and the reference's public methods, and nothing else is exported. Deliberate
differences are listed below, each with its reason; a backend that cannot be imported here
skips with the reason it gives.
"""

import importlib
import inspect

import pytest

import reference
from parity_tests.backends import backend_params

#: reference files whose names a backend does not export yet, per backend: {file: reason}. Every
#: name of reference.__all__ defined in such a file is excluded (so new names there need no edit);
#: test_exclusions_are_still_needed fails once the backend exports one of them.
NOT_YET = {
    "torch": {},
    "cupy": {},
}


def _not_exported(family: str) -> dict:
    """{name: reason} of reference.__all__ that the backend family deliberately lacks."""
    return {name: NOT_YET[family][module] for name in reference.__all__
            if (module := getattr(getattr(reference, name), "__module__", None)) in NOT_YET[family]}

#: exported names whose signature and methods are the backend's own, with the reason
OWN_SIGNATURE = {
    "torch": {
        "Parameter": "it is torch.nn.Parameter itself (torch optimizers, DDP and FSDP need it): "
                     "Parameter(data, requires_grad=True); .data, .grad, .shape, .dtype as the reference's",
    },
    "cupy": {},
}

#: public attributes of reference.Module that are tools for writing a hand-derived backward
#: (or the NumPy/CuPy array module), not part of the user's API
IMPLEMENTER_TOOLS = {
    "save_for_backward": "a hand-written backward's storage; autograd keeps what it needs",
    "saved": "the same, read side",
    "check_grad_output": "the same, argument check (the torch backward checks grad_output itself)",
    "new_parameter": "builds a NumPy/CuPy Parameter; the torch backend uses nn.Parameter",
    "xp": "the array module (numpy or cupy) the shared NumPy/CuPy code computes with",
    "embed_backward": "the stack input's hand-written backward (Encoder, Decoder)",
}


def _namespace(backend):
    return importlib.import_module("accelerated.torch" if backend.name.startswith("torch") else "accelerated.cupy")


def _family(backend) -> str:
    return "torch" if backend.name.startswith("torch") else "cupy"


def _parameters(func):
    """(name, kind, default) of each parameter, without self."""
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


def _signature_text(func) -> str:
    return str(inspect.signature(func))


def _public_members(cls) -> set:
    """Public attributes a user can reach on the reference class (its own and inherited)."""
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.fixture(scope="module", params=backend_params("torch") + backend_params("cupy"))
def backend(request):
    return request.param


def test_same_names(backend):
    rt = _namespace(backend)
    family = _family(backend)
    expected = set(reference.__all__) - set(_not_exported(family))
    assert set(rt.__all__) == expected, (
        f"missing: {sorted(expected - set(rt.__all__))}, extra: {sorted(set(rt.__all__) - expected)}"
    )
    for name in rt.__all__:
        assert hasattr(rt, name), f"{name} is in __all__ but not defined"


def test_same_kinds(backend):
    rt = _namespace(backend)
    for name in rt.__all__:
        ref_obj, obj = getattr(reference, name), getattr(rt, name)
        assert inspect.isclass(ref_obj) == inspect.isclass(obj), f"{name}: class on one backend only"


def test_same_signatures(backend):
    rt = _namespace(backend)
    own = OWN_SIGNATURE[_family(backend)]
    for name in rt.__all__:
        if name in own:
            continue
        ref_obj, obj = getattr(reference, name), getattr(rt, name)
        targets = [("", ref_obj, obj)]
        if inspect.isclass(ref_obj) and getattr(ref_obj, "forward", None) is not getattr(reference.Module, "forward", None):
            targets.append((".forward", ref_obj.forward, obj.forward))  # a layer's own forward
        for suffix, ref_f, f in targets:
            assert _parameters(f) == _parameters(ref_f), (
                f"{name}{suffix}: {_signature_text(f)} differs from the reference's {_signature_text(ref_f)}"
            )


def test_same_public_methods(backend):
    """Each class offers the reference class's public methods and properties (subclass-defined ones
    with the same parameters; the shared module protocol accepting at least the reference's)."""
    rt = _namespace(backend)
    own = OWN_SIGNATURE[_family(backend)]
    base = set(vars(reference.Module))
    for name in rt.__all__:
        ref_obj, obj = getattr(reference, name), getattr(rt, name)
        if name in own or not inspect.isclass(ref_obj):
            continue
        for member in sorted(_public_members(ref_obj) - set(IMPLEMENTER_TOOLS)):
            assert hasattr(obj, member), f"{name}.{member} is missing"
            ref_m, m = inspect.getattr_static(ref_obj, member), inspect.getattr_static(obj, member)
            if isinstance(ref_m, property):
                assert isinstance(m, property), f"{name}.{member} must be a property"
                continue
            if not callable(ref_m):
                continue
            ref_params, params = _parameters(getattr(ref_obj, member)), _parameters(getattr(obj, member))
            if member in base:
                # the protocol (parameters(), train(), named_modules(), ...) is torch.nn.Module's own on the
                # torch backend: it takes the reference's arguments by name with the same defaults (torch
                # puts named_modules' memo first, and its own recursion passes it by position), and any
                # parameter of its own is optional
                by_name = {p_name: (kind, default) for p_name, kind, default in params}
                for p_name, _, default in ref_params:
                    assert p_name in by_name, f"{name}.{member} lacks the reference's parameter {p_name!r}"
                    assert by_name[p_name][1] == default, f"{name}.{member}: default of {p_name!r} differs"
                extra = [p for p in params if p[0] not in {r[0] for r in ref_params}]
                assert all(default is not inspect.Parameter.empty or kind in (
                    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) for _, kind, default in extra), (
                    f"{name}.{member}: extra parameters must be optional, got {extra}"
                )
            else:
                assert params == ref_params, f"{name}.{member}: {params} differs from the reference's {ref_params}"


def test_exclusions_are_still_needed(backend):
    """An exclusion whose reason went away (the names now agree) must be deleted."""
    rt = _namespace(backend)
    family = _family(backend)
    for name in _not_exported(family):
        assert name not in rt.__all__, f"{name} is exported now: drop its file from NOT_YET"
    for name in OWN_SIGNATURE[family]:
        ref_obj, obj = getattr(reference, name), getattr(rt, name)
        try:
            same = _parameters(ref_obj) == _parameters(obj)
        except (TypeError, ValueError):  # no introspectable signature: different by construction
            same = False
        assert not same, f"{name} has the reference's signature now: drop it from OWN_SIGNATURE"


def test_modules_are_torch_modules():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'rosetta-transformer[torch]')")
    rt = importlib.import_module("accelerated.torch")
    for name in rt.__all__:
        obj = getattr(rt, name)
        if inspect.isclass(obj) and issubclass(getattr(reference, name), reference.Module):
            assert issubclass(obj, torch.nn.Module), f"{name} must be a torch.nn.Module"
    assert rt.Parameter is torch.nn.Parameter
