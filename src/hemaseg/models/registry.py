"""Model registry (a leaf: model families register into it, as timm's do; the package's
``__init__`` imports every family): name -> constructor, and model cards (safetensors + JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hemaseg.errors import HemasegInputError
from hemaseg.io.writers import atomic_path, write_json

if TYPE_CHECKING:
    from torch import nn

# torch and safetensors.torch are imported inside the functions that build or load a torch model:
# importing hemaseg, and the ONNX Runtime backend of the light install, need neither.

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator adding a constructor to the registry under ``name``."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        return fn

    return deco


def list_models(bundled: bool = False) -> list[str]:
    """Names of the registered architectures (what :func:`create_model` builds); with ``bundled``, the
    models shipped with weights (what :func:`load_model` loads by name), as timm's
    ``list_models(pretrained=True)``.

    >>> "wbc" in list_models(bundled=True)
    True
    """
    if bundled:
        return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if p.with_suffix(".safetensors").exists())
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with ``kwargs`` (random initialisation)."""
    if name not in _MODELS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


# ---- model cards ---------------------------------------------------------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The bundled sample photo (BCCD, 640x480, one neutrophil): what the demo, exports and viewers open.
SAMPLE_PHOTO = WEIGHTS_DIR.parent / "samples" / "BloodImage_00000.jpg"


def save_file(tensors: dict, filename: str) -> None:
    """safetensors' ``save_file`` for torch tensors (safetensors.torch, and torch, imported on first use)."""
    from safetensors.torch import save_file as save

    save(tensors, filename)


def save_model(model: nn.Module, path: str | Path, card: dict) -> tuple[Path, Path]:
    """Write ``path``.safetensors and ``path``.json (the model card), atomically."""
    path = Path(path)
    st = path.with_suffix(".safetensors")
    with atomic_path(st) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    js = write_json(path.with_suffix(".json"), card)
    return st, js


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Find a model's safetensors file: a bundled name (``wbc``), a file, or a training run folder."""
    p = Path(name_or_path)
    if p.is_dir():
        for cand in ("model.safetensors", "best.safetensors", "last.safetensors"):
            if (p / cand).exists():
                return p / cand
        raise HemasegInputError(p, "folder holds no model.safetensors / best.safetensors")
    if p.suffix == ".json" and p.with_suffix(".safetensors").exists():
        return p.with_suffix(".safetensors")
    if p.exists():
        return p
    bundled = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if bundled.exists():
        return bundled
    raise HemasegInputError(p, "no such model file, run folder or bundled model (bundled: "
                               + ", ".join(list_models(bundled=True)) + ")")


def load_card(name_or_path: str | Path) -> tuple[Path, dict]:
    """(safetensors path, model card) of a bundled name, a safetensors file or a run folder,
    without loading the weights."""
    st = resolve_model_path(name_or_path)
    card_path = st.with_suffix(".json")
    if not card_path.exists():
        # Checkpoints in a run folder share one card (model.json) written by training.
        card_path = st.parent / "model.json"
    if not card_path.exists():
        raise HemasegInputError(st, "model card JSON not found beside the weights")
    try:
        card = json.loads(card_path.read_text())
        card["architecture"]  # every card names its architecture
    except (ValueError, KeyError) as exc:
        raise HemasegInputError(card_path, f"not a hemaseg model card ({exc})") from None
    return st, card


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"[:200]


def load_weights(model: nn.Module, state: dict, source: str | Path, arch: str) -> None:
    """Load a state dict into ``model``; weights of another architecture (or other arguments) are one
    :class:`HemasegInputError` line saying how many tensors are missing, unexpected or of another shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    other = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or other:
        first = (missing or unexpected or other)[0]
        raise HemasegInputError(source, f"weights do not fit architecture {arch}: {len(missing)} tensors missing, "
                                        f"{len(unexpected)} unexpected, {len(other)} of another shape "
                                        f"(first: {first}); the weights and the card disagree")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as exc:  # dtype trouble and the like: one line, not torch's page
        raise HemasegInputError(source, f"weights do not load into {arch} ({_first_line(exc)})") from None


def load_model(name_or_path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a model and its card from a bundled name, a safetensors file or a run folder (torch)."""
    import torch
    from safetensors.torch import load_file

    st, card = load_card(name_or_path)
    if st.suffix == ".onnx":
        raise HemasegInputError(st, "an ONNX file: it runs on ONNX Runtime (backend onnx), not torch")
    arch = card["architecture"]
    try:
        model = create_model(arch["name"], **arch.get("kwargs", {}))
    except Exception as exc:  # unknown architecture or arguments in the card
        raise HemasegInputError(st, f"the model card's architecture cannot be built ({_first_line(exc)})") from None
    try:
        state = load_file(str(st))
    except Exception as exc:
        raise HemasegInputError(st, f"not a readable safetensors file ({_first_line(exc)})") from None
    load_weights(model, state, st, arch["name"])
    # channels_last runs oneDNN's faster convolution kernels on CPUs (about 1.5x here).
    model.eval().to(device, memory_format=torch.channels_last)
    return model, card


# Metric groups a model card records at training time (the checkpoint-picking check); any other
# group (val_pipeline, a benchmark's) was measured afterwards through the shipped pipeline.
TRAINING_TIME_METRICS = ("val", "val_native_scale", "val_union_best_epoch", "epoch", "note", "command")


def card_figures(card: dict, limit: int = 6) -> list[str]:
    """Headline figures of a model card as ``group.key=value``: the measured groups when the card has
    any (training-time figures are stale once the pipeline has been measured), else the training-time ones.

    >>> card_figures({"metrics": {"val": {"map50": 0.605}, "val_pipeline": {"map50": 0.881, "note": "x"}}})
    ['val_pipeline.map50=0.881']
    """
    metrics = card.get("metrics", {})
    measured = [k for k, v in metrics.items() if isinstance(v, dict) and k not in TRAINING_TIME_METRICS]
    groups = measured or [k for k, v in metrics.items() if isinstance(v, dict)]
    figures = []
    for key in groups:
        figures += [f"{key}.{k}={v:.3f}" for k, v in metrics[key].items() if isinstance(v, float)][:4]
    return figures[:limit]
