"""What a chip costs: programming it (write-verify) and running it (inference), in J, s and mm^2.

* :mod:`cimsim.cost.programming`: :class:`CostConfig`, per-cell write-verify energy and latency;
* :mod:`cimsim.cost.technology`: the cited constants of a technology node (:class:`Technology`);
* :mod:`cimsim.cost.activity`: what a layer's arrays do for its input rows (counts);
* :mod:`cimsim.cost.inference`: energy, latency and area per inference from those counts.

Sources and rationale: docs/design.md, sections 'Cost model (cimsim/cost)' and 'Inference cost'.
"""
from cimsim.cost.programming import (  # noqa: F401
    ISAAC_ADC_PJ, Cost, CostConfig, CostError, CostReport, cell_energy_J, energy_per_bit_J, model_cost,
    programming_latency_s, write_verify_cost,
)
from cimsim.cost.technology import TECHNOLOGIES, Technology, technology  # noqa: F401
from cimsim.cost.activity import LayerActivity, layer_activity  # noqa: F401
from cimsim.cost.inference import (  # noqa: F401
    ChipCostConfig, InferenceCost, LayerCost, check_priceable, inference_cost, price, price_layer, recording,
)
