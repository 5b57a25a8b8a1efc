"""Type checks of the JSON configs inside Keras files, before any reader uses them.

A config is data from the file: each part the readers use (the model's
``layers`` lists, ``compile_config.optimizer``, the optimizer's
hyperparameters; tf-keras's ``training_config``) must have the JSON type Keras
writes there, or `FileFormatError` names the key (``config.layers[0] is an
int; expected an object``) instead of a reader failing on it later.
"""

from typing import Any, Dict, List, Optional, Tuple

from optax_nadam.interop._files import FileFormatError

# The optimizer classes Keras 3 and tf-keras write (``keras.optimizers.*``).
KERAS_OPTIMIZERS = frozenset({
    "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "Ftrl", "Lamb", "Lion",
    "LossScaleOptimizer", "Muon", "Nadam", "RMSprop", "SGD"})
_KERAS_MODULES = ("keras", "tf_keras")

_NUMBER = (int, float)
_OPTIMIZER_KEYS: Dict[str, Tuple[type, ...]] = {
    "name": (str,), "beta_1": _NUMBER, "beta_2": _NUMBER, "epsilon": _NUMBER, "decay": _NUMBER,
    "weight_decay": _NUMBER, "clipnorm": _NUMBER, "clipvalue": _NUMBER,
    "global_clipnorm": _NUMBER, "use_ema": (bool,), "ema_momentum": _NUMBER,
    "ema_overwrite_frequency": (int,), "loss_scale_factor": _NUMBER,
    "gradient_accumulation_steps": (int,), "is_legacy_optimizer": (bool,),
    "learning_rate": _NUMBER + (dict,), "momentum_decay": _NUMBER, "amsgrad": (bool,)}


def _json_type(x: Any) -> str:
  names = {dict: "an object", list: "a list", str: "a str", bool: "a bool", int: "an int",
           float: "a float", type(None): "null"}
  return names.get(type(x), type(x).__name__)


def _want(types: Tuple[type, ...]) -> str:
  names = {dict: "an object", list: "a list", str: "a str", bool: "a bool", int: "an int",
           float: "a float"}
  return " or ".join(dict.fromkeys(names[t] for t in types))


def expect(x: Any, types: Tuple[type, ...], where: str, key: str, optional: bool = True) -> Any:
  """`x` if it has one of the JSON `types` (or is null when `optional`), else refuses."""
  if x is None and optional:
    return x
  ok = isinstance(x, types) and not (isinstance(x, bool) and bool not in types)
  if not ok:
    raise FileFormatError(f"{where}: {key} is {_json_type(x)}; expected {_want(types)}.")
  return x


def check_model_config(config: Any, where: str) -> None:
  """Checks a Keras 3 ``config.json``: objects, ``layers`` lists, the optimizer's config."""
  if not isinstance(config, dict):
    raise FileFormatError(f"{where} is {_json_type(config)}; expected an object.")
  stack: List[Tuple[Any, str]] = [(config, "")]
  while stack:
    entry, key = stack.pop()
    for field in ("class_name", "module", "registered_name"):
      expect(entry.get(field), (str,), where, f"{key}{field}")
    inner = expect(entry.get("config"), (dict,), where, f"{key}config")
    if inner is None:
      continue
    expect(inner.get("trainable"), (bool,), where, f"{key}config.trainable")
    layers = expect(inner.get("layers"), (list,), where, f"{key}config.layers")
    for i, layer in enumerate(layers or []):
      expect(layer, (dict,), where, f"{key}config.layers[{i}]", optional=False)
      stack.append((layer, f"{key}config.layers[{i}]."))
  compile_config = expect(config.get("compile_config"), (dict,), where, "compile_config")
  if compile_config is not None:
    check_optimizer(compile_config.get("optimizer"), where, "compile_config.optimizer")


def check_optimizer(opt: Any, where: str, key: str) -> None:
  """Checks an optimizer's serialized form: a name, or class_name / module / config."""
  if opt is None or isinstance(opt, str):
    return
  expect(opt, (dict,), where, key, optional=False)
  expect(opt.get("class_name"), (str,), where, f"{key}.class_name", optional=False)
  for field in ("module", "registered_name"):
    expect(opt.get(field), (str,), where, f"{key}.{field}")
  cfg = expect(opt.get("config"), (dict,), where, f"{key}.config", optional=False)
  for name, types in _OPTIMIZER_KEYS.items():
    expect(cfg.get(name), types, where, f"{key}.config.{name}")


def check_training_config(training: Any, where: str) -> None:
  """Checks a tf-keras ``.h5``'s ``training_config`` attribute."""
  if not isinstance(training, dict):
    raise FileFormatError(f"{where}: training_config is {_json_type(training)}; expected an "
                          "object.")
  opt = training.get("optimizer_config")
  if opt is not None:
    check_optimizer(opt, where, "training_config.optimizer_config")


def optimizer_name(opt: Dict[str, Any]) -> str:
  """The class name of a serialized optimizer, module-qualified when Keras did not write it."""
  name, module = opt.get("class_name"), opt.get("module")
  if module is None or module.split(".")[0] in _KERAS_MODULES:
    return str(name)
  return f"{module}.{name}"


def check_keras_optimizer(name: Optional[str], where: str) -> None:
  """Refuses an optimizer class that is not one of Keras's (``os.system``, a custom class)."""
  if name not in KERAS_OPTIMIZERS:
    raise FileFormatError(
        f"{where}: the saved optimizer class is {name}, not one of Keras's optimizers "
        f"({', '.join(sorted(KERAS_OPTIMIZERS))}); its config is not returned.")
