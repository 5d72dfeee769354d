"""The methods ``rvq compare`` puts side by side, each named on the command line as one of:

- ``EST``: an estimator (``rotation``, ``ste``, ``diveq``; ``rvq estimators`` lists them) on the
  recipe's quantizer;
- ``EST:CODEBOOK``: that estimator on a codebook parameterisation, ``plain``, ``simvq`` or
  ``affine`` (``rotation:simvq``, ``ste:affine``). SimVQ learns its linear map by gradient, so
  ``EST:simvq`` also sets ``update: learned``;
- ``fsq`` or ``fsq:L1-L2-…``: finite scalar quantization with the FSQ paper's levels for about
  the recipe's codebook size (1024 codes: 8-5-5-5) or with the levels given, and its
  straight-through rounding. The recipe's codebook settings, which FSQ has no use for, go back
  to their defaults for that run.

A method is a list of recipe overrides on top of the comparison's recipe, so each run is an
ordinary ``rvq train`` of that recipe; its folder in the comparison is its name with ``:`` as
``-`` (``rotation-simvq``), a name every file system takes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..config import FSQ_KEYS, LossConfig, QuantizerConfig, Recipe
from ..quantize import ESTIMATORS
from ..quantize.fsq import check_levels, paper_levels
from ..quantize.parameterisations import CODEBOOKS

__all__ = ["Method", "method_folder", "parse_method"]

FSQ = "fsq"
SYNTAX = (f"an estimator ({', '.join(ESTIMATORS)}), EST:CODEBOOK with CODEBOOK one of {', '.join(CODEBOOKS)} "
          "(e.g. rotation:simvq), or fsq / fsq:L1-L2-... (e.g. fsq:8-5-5-5)")


@dataclass(frozen=True)
class Method:
    """One method of a comparison (see the module docstring for the names)."""

    name: str
    estimator: str
    codebook: str | None = None  # None: the recipe's
    fsq: bool = False
    levels: tuple[int, ...] | None = None  # fsq: None for the paper's levels for the recipe's codebook size

    @property
    def folder(self) -> str:
        return method_folder(self.name)

    def fsq_levels(self, base: Recipe) -> tuple[int, ...]:
        return self.levels or paper_levels(base.model.quantizer.codebook_size)

    def overrides(self, base: Recipe) -> list[str]:
        """The recipe overrides that turn ``base`` into this method's recipe."""
        if not self.fsq:
            out = [f"model.quantizer.estimator={self.estimator}"]
            if self.codebook is not None:
                out.append(f"model.quantizer.codebook={self.codebook}")
            if self.codebook == "simvq":
                out.append("model.quantizer.update=learned")
            return out
        levels = self.fsq_levels(base)
        out = [f"model.quantizer.kind={FSQ}", f"model.quantizer.levels={json.dumps(list(levels))}",
               f"model.quantizer.codebook_size={math.prod(levels)}", "model.quantizer.codebook_dim=null",
               "model.quantizer.estimator=ste"]
        q, fields = base.model.quantizer, QuantizerConfig.model_fields
        out += [f"model.quantizer.{key}={json.dumps(fields[key].default)}" for key in fields
                if key not in FSQ_KEYS and getattr(q, key) != fields[key].default]
        default_weight = LossConfig.model_fields["codebook_weight"].default
        if base.loss.codebook_weight != default_weight:
            out.append(f"loss.codebook_weight={default_weight}")
        return out

    def notes(self, base: Recipe) -> list[str]:
        """What this method changes beyond the estimator, for the report."""
        q = base.model.quantizer
        if self.fsq:
            levels = self.fsq_levels(base)
            reset = [key for key in QuantizerConfig.model_fields
                     if key not in FSQ_KEYS and getattr(q, key) != QuantizerConfig.model_fields[key].default]
            return [f"{self.name}: FSQ with levels {list(levels)} ({math.prod(levels)} codes, straight-through "
                    f"rounding) in place of the recipe's {q.codebook_size}-code codebook"
                    + (f"; the recipe's {', '.join(reset)} do not apply to it" if reset else "")
                    + ". Its quantization error is measured in FSQ's bounded code space and does not compare "
                    "with the codebook runs'."]
        if self.codebook == "simvq" and q.update != "learned":
            return [f"{self.name}: SimVQ learns its map by gradient, so this run trains its codebook with update: "
                    f"learned where the recipe's is {q.update}; add model.quantizer.update=learned to give every "
                    "run the same update."]
        return []


def method_folder(name: str) -> str:
    """The folder of a method's runs inside a comparison's output folder."""
    return name.replace(":", "-")


def parse_method(name: str) -> Method:
    """The method ``name`` denotes; a ValueError says what is wrong with it."""
    head, sep, tail = name.partition(":")
    if head == FSQ:
        if not sep:
            return Method(name, "ste", fsq=True)
        try:
            levels = tuple(int(part) for part in tail.split("-"))
        except ValueError:
            raise ValueError(f"{name!r}: FSQ levels are integers joined by '-', e.g. fsq:8-5-5-5") from None
        try:
            return Method(name, "ste", fsq=True, levels=check_levels(levels))
        except ValueError as err:
            raise ValueError(f"{name!r}: {err}") from None
    if head not in ESTIMATORS:
        raise ValueError(f"{name!r}: unknown estimator {head!r}; a method is {SYNTAX}")
    if sep and tail not in CODEBOOKS:
        raise ValueError(f"{name!r}: unknown codebook {tail!r}; valid: {', '.join(CODEBOOKS)}")
    return Method(name, head, codebook=tail if sep else None)
