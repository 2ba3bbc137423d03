"""PyTorch on the crossbar: :mod:`.autograd` (CrossbarMatMul, straight-through backward),
:mod:`.functional` (linear and conv on a programmed array), :mod:`.modules` (CIMLinear, CIMConv2d,
CIMConv1d, CIMMultiheadAttention, convert, calibrate, program); the public names are re-exported
here (``from cimsim import nn as cim``)."""
from cimsim.nn.modules import (CHIP_KEYS, MODES, CIMConv1d, CIMConv2d, CIMLinear, CIMModule, CIMMultiheadAttention,
                               calibrate, cim_layers, convert, program, reprogram, set_mode, unconvert, use_mode)

__all__ = ["CIMModule", "CIMLinear", "CIMConv2d", "CIMConv1d", "CIMMultiheadAttention", "convert", "unconvert",
           "cim_layers", "set_mode", "use_mode", "program", "reprogram", "calibrate", "MODES", "CHIP_KEYS"]
