"""The animation methods. Importing this package registers every method (see
:mod:`animzoo.registry`) and makes the class names LightningCLI short names
(``--model MonkeyNet``, ``--model SourceCopy``)."""

from animzoo.methods.base import AnimationModule
from animzoo.methods.baselines import SourceCopy
from animzoo.methods.imf import IMF
from animzoo.methods.monkeynet import MonkeyNet
from animzoo.methods.pwm import PWM
from animzoo.methods.sparse2dense import Sparse2Dense

__all__ = ["AnimationModule", "IMF", "MonkeyNet", "PWM", "SourceCopy", "Sparse2Dense"]
