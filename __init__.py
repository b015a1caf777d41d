"""qwen3-trainer: train the Qwen3 family through the whole Qwen3 recipe, locally or on Kubernetes.

The three subpackages ``qwen3_trainer.model``, ``.platform`` and ``.workflows`` live in the repo's
model/, platform/ and workflows/ folders (setuptools ``package-dir``). Those folders hold no
``__init__.py``: a regular package named ``platform`` on ``sys.path`` would shadow Python's stdlib
``platform`` module. Their public names are therefore attached here, lazily (PEP 562), so that
``from qwen3_trainer.model import from_hf`` works and importing the package stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# subpackage -> {public name: defining module}
_EXPORTS: dict[str, dict[str, str]] = {
    "model": {
        "FLAVORS": "qwen3_trainer.model.flavors",
        "get_flavor": "qwen3_trainer.model.flavors",
        "count_params": "qwen3_trainer.model.flavors",
        "build_model": "qwen3_trainer.model.build",
        "from_hf": "qwen3_trainer.model.hf_interop",
        "to_hf": "qwen3_trainer.model.hf_interop",
        "GlobalBatchLoadBalancer": "qwen3_trainer.model.load_balance",
        "load_tokenizer": "qwen3_trainer.model.tokenizer",
        "generate": "qwen3_trainer.model.generation",
        "SamplingParams": "qwen3_trainer.model.generation",
        "apply_chat_template": "qwen3_trainer.model.chat_template",
        "render_for_training": "qwen3_trainer.model.chat_template",
    },
}


def _lazy_getattr(package: str, table: dict[str, str]):
    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__


for _sub, _table in _EXPORTS.items():
    _module = importlib.import_module(f"{__name__}.{_sub}")
    _module.__getattr__ = _lazy_getattr(_module.__name__, _table)  # type: ignore[attr-defined]
    _module.__all__ = sorted(_table)  # type: ignore[attr-defined]
