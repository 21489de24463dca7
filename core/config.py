"""Configuration models that need no torch: the one-line validation of pydantic
models, and :class:`MetaTrainConfig`, which suite files embed (so that validating a
suite or printing its schema does not import torch)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import pydantic

from .errors import ConfigError

#: Validation optimizees are seeds ``VALIDATION_SEED_BASE + i``, far from the test seeds
#: ``0 .. n-1``, for tuning baselines and early stopping alike.
VALIDATION_SEED_BASE = 1_000_000


def validate_model(model: type[pydantic.BaseModel], params: Mapping[str, Any], where: str):
    """Validate ``params`` against ``model``, turning pydantic's report into one line."""
    try:
        return model(**params)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, model, where)) from None


def describe_validation_error(exc: pydantic.ValidationError, model: type[pydantic.BaseModel], where: str) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<config>"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(model.model_fields)
        return f"{where}: unknown key {key!r} (value {value!r}); allowed keys: {allowed}"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a check across settings says what and where itself
        return f"{where}: {msg}"
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        msg = f"expected {ctx['expected']}"
    return f"{where}: invalid {key}={value!r}: {msg}"


#: the default meta-objective (the training loss of Eq. 3) and the prefix of one read from
#: ``Task.evaluate`` (``heldout_loss``, ``heldout_accuracy``)
TRAIN_LOSS = "loss"
HELDOUT_PREFIX = "heldout_"

#: Settings left out of a meta-train cell's key while at these defaults, so the keys (and the
#: results) of suites written before the settings existed stay what they were.
KEYLESS_DEFAULTS: dict[str, Any] = {"estimator": "tbptt", "estimator_params": {}, "objective": "loss",
                                     "truncation_schedule": "constant", "min_horizon": None}

#: how each episode's horizon is drawn (learned_optimization's ``truncation_schedule.py``)
TRUNCATION_SCHEDULES = ("constant", "log-uniform")

WEIGHTINGS = ("ones", "final", "unroll-final", "linear")
WeightFn = Callable[[int, int], float]


class MetaTrainConfig(pydantic.BaseModel):
    """Settings of :func:`l2obench.metatrain.meta_train`; unknown keys and bad values are refused in one line.

    ``weights`` are the ``w_t`` of Eq. 3 over the horizon (``t = 0 .. horizon-1``):
    ``"ones"`` (the paper), ``"final"`` (only the last step of the horizon: unrolls
    that do not contain it contribute no meta-gradient and are rolled forward
    without a graph), ``"unroll-final"`` (the last step of every unroll),
    ``"linear"`` (``w_t = (t+1)/horizon``), or, from Python, a function
    ``w(t, horizon) -> float``.
    ``validation_seeds = 0`` turns validation and early stopping off (the final
    meta-parameters are kept).  ``time_limit_s`` stops training after that many
    seconds (then the run is no longer reproducible by seed alone).
    ``estimator`` names a registered meta-gradient estimator (``tbptt``, the paper's, by
    default; ``es``, ``pes``) and ``estimator_params`` its settings; ``objective`` is what it
    follows, the training loss (``loss``) or a held-out metric (``heldout_loss``,
    ``heldout_accuracy``: ES and PES only); early stopping validates the same objective
    (a held-out one summed over the ends of the truncations).
    ``truncation_schedule`` draws each episode's horizon, as learned_optimization's truncation
    schedules do: ``"constant"`` (every episode ``horizon`` steps, the paper's) or
    ``"log-uniform"`` (log-uniformly between ``min_horizon``, default the unroll, and
    ``horizon``, from the meta-training seed's generator); the weights ``w_t`` are those of the
    episode's own horizon, and validation always runs the whole ``horizon``.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    horizon: int = pydantic.Field(100, gt=0, description="optimizee steps per episode (T)")
    unroll: int = pydantic.Field(20, gt=0, description="steps per truncated-BPTT unroll (K)")
    epochs: int = pydantic.Field(20, gt=0, description="epochs of meta-training")
    episodes_per_epoch: int = pydantic.Field(20, gt=0, description="episodes (fresh optimizees) per epoch")
    meta_batch: int = pydantic.Field(1, gt=0, description="optimizees (seeds) per episode, batched")
    lr: float = pydantic.Field(1e-3, gt=0, description="Adam learning rate on the meta-parameters")
    clip: float | None = pydantic.Field(1.0, gt=0, description="meta-gradient norm clipping (None: off)")
    weights: Union[str, Callable[[int, int], float]] = pydantic.Field(
        "ones", description="loss weights w_t of Eq. 3 (ones, as in the paper)")
    second_order: bool = pydantic.Field(False, description="keep second derivatives")
    validate_every: int = pydantic.Field(1, gt=0, description="epochs between validations")
    validation_seeds: int = pydantic.Field(8, ge=0, description="validation optimizees for early stopping; "
                                                              "0 turns it off")
    seed: int = pydantic.Field(0, ge=0, description="seed of the initial meta-parameters and of the optimizees drawn")
    time_limit_s: float | None = pydantic.Field(None, gt=0, description="stop training after this many seconds")
    estimator: str = pydantic.Field("tbptt", description="meta-gradient estimator (l2obench list --kind estimator): "
                                                         "tbptt, es or pes")
    estimator_params: dict[str, Any] = pydantic.Field(default_factory=dict, description="the estimator's settings, "
                                                      "e.g. {population = 8, sigma = 0.01, truncation = 20}")
    objective: str = pydantic.Field("loss", description="meta-objective: loss (training loss, Eq. 3) or "
                                                        "heldout_<metric> (e.g. heldout_loss, heldout_accuracy)")
    truncation_schedule: str = pydantic.Field("constant", description="each episode's horizon: constant (horizon) "
                                                                      "or log-uniform (min_horizon to horizon)",
                                              json_schema_extra={"enum": list(TRUNCATION_SCHEDULES)})
    min_horizon: int | None = pydantic.Field(None, gt=0, description="the shortest episode of a log-uniform "
                                                                     "truncation_schedule (None: the unroll)")

    @pydantic.field_validator("weights")
    @classmethod
    def _known_weights(cls, value):
        if isinstance(value, str) and value not in WEIGHTINGS:
            raise ValueError(f"expected one of {', '.join(WEIGHTINGS)} (or a function w(t, horizon) from Python)")
        return value

    @pydantic.field_validator("objective")
    @classmethod
    def _known_objective(cls, value):
        if value != TRAIN_LOSS and not (value.startswith(HELDOUT_PREFIX) and len(value) > len(HELDOUT_PREFIX)):
            raise ValueError("expected loss (the training loss) or heldout_<metric> (e.g. heldout_loss, "
                             "heldout_accuracy)")
        return value

    @pydantic.field_validator("truncation_schedule")
    @classmethod
    def _known_schedule(cls, value):
        if value not in TRUNCATION_SCHEDULES:
            raise ValueError(f"expected one of {', '.join(TRUNCATION_SCHEDULES)}")
        return value

    @pydantic.model_validator(mode="after")
    def _min_horizon_fits(self):
        if self.min_horizon is not None:
            if self.truncation_schedule == "constant":
                raise ValueError(f"min_horizon={self.min_horizon} is for truncation_schedule = \"log-uniform\"; "
                                 f"with \"constant\" every episode is horizon={self.horizon} steps")
            if self.min_horizon > self.horizon:
                raise ValueError(f"min_horizon={self.min_horizon} is longer than horizon={self.horizon}; give at "
                                 f"most {self.horizon}")
        return self

    @classmethod
    def from_params(cls, **params) -> "MetaTrainConfig":
        """Validate keyword settings, raising a one-line :class:`ConfigError`."""
        return validate_model(cls, params, where="meta-train config")

    def describe(self) -> dict[str, Any]:
        """The settings as JSON-ready data (a weight function is named, not serialised)."""
        data = self.model_dump()
        if callable(self.weights):
            data["weights"] = getattr(self.weights, "__qualname__", repr(self.weights))
        return data
