"""Run config of a TopK SAE (Gao et al. 2024): the AuxK loss on dead latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mechflow.runconfig import option
from mechflow.sae.configs.base import ARCH_DOC, SAERunConfig
from mechflow.sae.defaults import RunContext


@dataclass(frozen=True, kw_only=True)
class TopKConfig(SAERunConfig):
    """Options of a TopK SAE: the AuxK loss on dead latents (Gao et al. 2024)."""

    NEEDS_K: ClassVar[bool] = True

    arch: str = option("topk", ARCH_DOC)
    #: auxk_coef when the run leaves it null
    AUXK_DEFAULT: ClassVar[float] = 1 / 32

    auxk_coef: float | None = option(None, "weight of the AuxK loss (dead latents reconstruct the residual; 0: off; "
                                           "null: 1/32 for topk as in Gao et al. 2024, 1/8 for batchtopk and "
                                           "matryoshka)", minimum=0)
    k_aux: int | None = option(None, "dead latents used by AuxK (null: d_in / 2)", minimum=1)

    def derive_options(self, ctx: RunContext) -> dict[str, Any]:
        return {} if self.auxk_coef is not None else {"auxk_coef": self.AUXK_DEFAULT}
