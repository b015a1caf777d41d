"""The one door to torchtitan's Qwen3: applies the CPU patches, then re-exports what we build on.

Every module of ``qwen3_trainer`` that needs torchtitan's qwen3/MoE classes imports them from here,
so the patches in ``cpu_compat`` are in place before torchtitan's own imports run.
"""

from qwen3_trainer.model import cpu_compat

cpu_compat.apply()

from torchtitan.models.moe import MoE, MoEArgs  # noqa: E402
from torchtitan.models.qwen3 import Qwen3Model, Qwen3ModelArgs, parallelize_qwen3  # noqa: E402
from torchtitan.models.qwen3.model.state_dict_adapter import Qwen3StateDictAdapter  # noqa: E402

__all__ = ["MoE", "MoEArgs", "Qwen3Model", "Qwen3ModelArgs", "Qwen3StateDictAdapter", "parallelize_qwen3"]
