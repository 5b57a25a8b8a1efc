"""`resume_from_keras`: one call from a Keras / TF file to ``(params, tx, opt_state)``.

The files come from the real peers (`tests/scripts/keras_files_writer.py`, the
``files`` fixture): Keras 3.15 on the jax backend and tf-keras 2.21 legacy
Nadam, each run continued 20 ``train_on_batch`` steps after saving. Here the
file is resumed and continued 20 steps; the gap max |ours - theirs| /
max |theirs| must be <= 1e-5 (a fresh optimizer state misses by > 3e-4).
``pytest -s`` prints every gap. Refusals are asserted with their messages.
"""

import io
import json
import zipfile

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_nadam import keras as okeras
from optax_nadam.interop import params_from_keras, resume_from_keras, state_from_keras
from optax_nadam.interop.keras import _read, optimizer_config_from_keras
from tests.helpers import reference as ref

TOL = 1e-5
STEPS = 20
EPS = {"epsilon": 1e-7}  # what a TF checkpoint does not store


def _weights(path):
  z = np.load(path)
  return [z[f"w{i}"] for i in range(len(z.files))]


def _chain_loss(params, x, y):
  """Dense layers with tanh between them (the writer's models), mean squared error."""
  h, n = x, len(params) // 2
  for i in range(n):
    h = h @ params[2 * i] + params[2 * i + 1]
    if i < n - 1:
      h = jnp.tanh(h)
  return jnp.mean((h - y) ** 2)


def _scale_shift_loss(params, x, y):  # k3.keras: Dense(4, tanh) -> ScaleShift -> Dense(2)
  w1, b1, scale, shift, w2, b2 = params
  return jnp.mean(((jnp.tanh(x @ w1 + b1) * scale + shift) @ w2 + b2 - y) ** 2)


def _continue(tx, params, state, x, y, loss=_chain_loss):
  return ref.continue_on_loss(tx, params, state, loss, x, y, steps=STEPS)


def _gap(ours, theirs, name):
  scale = max(float(np.max(np.abs(t))) for t in theirs)
  gap = max(float(np.max(np.abs(np.asarray(o, np.float64) - t))) for o, t in zip(ours, theirs))
  print(f"\nresume gap, {name}: {gap / scale:.2e} (max |diff| / max |param| after {STEPS} steps)")
  return gap / scale


def _data(files, wide):
  d = np.load(files / "data.npz")
  return (jnp.asarray(d["x4"]), jnp.asarray(d["y4"])) if wide else (
      jnp.asarray(d["x"]), jnp.asarray(d["y"]))


def _like(arrays):
  return [jnp.zeros(np.shape(a), jnp.float32) for a in arrays]


RUNS = {
    # case: (file, weights after the peer's 20 more steps, 4-wide data, resume kwargs)
    "keras3_custom_layer": ("k3.keras", "k3_after.npz", False, {}),
    "keras3_ema_schedule_decay_mid_accumulation_1_of_3": (  # weight decay, nothing excluded
        "k3_ema.keras", "k3_ema_after.npz", False,
        {"config": {"exclude_from_weight_decay": []}}),
    "keras3_clipnorm_mid_accumulation_2_of_3": ("k3_acc2.keras", "k3_acc2_after.npz", False, {}),
    "keras3_functional_nested_equal_shapes": (
        "k3_nested.keras", "k3_nested_after.npz", True, {}),
    "keras3_deep_431_layers": ("k3_deep.keras", "k3_deep_after.npz", False, {}),
    "keras3_subclassed_shapes_prove_the_order": (
        "k3_sub_distinct.keras", "k3_sub_distinct_after.npz", True, {}),
    "tf_keras_legacy_h5": ("legacy.h5", "legacy_after.npz", False, {}),
    "tf_checkpoint": ("legacy_ckpt/ckpt-1", "legacy_after.npz", False, {"config": EPS}),
    "tf_keras_nested_h5": ("legacy_nested.h5", "legacy_nested_after.npz", True, {}),
    "tf_checkpoint_nested_equal_shapes": (
        "legacy_nested_ckpt", "legacy_nested_after.npz", True, {"config": EPS}),
    "tf_checkpoint_subclassed_nested": (
        "legacy_sub_ckpt", "legacy_sub_after.npz", True, {"config": EPS}),
    "tf_keras_loss_scale_optimizer_h5": ("legacy_lso.h5", "legacy_lso_after.npz", True, {}),
    "tf_checkpoint_loss_scale_optimizer": (
        "legacy_lso_ckpt", "legacy_lso_after.npz", True, {"config": EPS}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RUNS))
def test_resume_continues_the_peers_run(files, case):
  name, after, wide, kwargs = RUNS[case]
  x, y = _data(files, wide)
  theirs = _weights(files / after)
  loss = _scale_shift_loss if name == "k3.keras" else _chain_loss
  params, tx, state = resume_from_keras(files / name, _like(theirs), **kwargs)
  assert isinstance(tx, okeras.Nadam)
  ours, _ = _continue(tx, params, state, x, y, loss)
  assert _gap(ours, theirs, case) <= TOL
  # Control: the same params and tx from a fresh state miss the run.
  fresh, _ = _continue(tx, params, tx.init(params), x, y, loss)
  assert _gap(fresh, theirs, f"control, {case} with a fresh state") > 30 * TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["legacy_nested.h5", "legacy_nested_ckpt", "k3_nested.keras",
                                  "k3_deep.keras"])
def test_weights_come_in_trainable_variables_order(files, name):
  # The TF checkpoint's object graph lists the nested model's slots breadth first
  # (outer layers first); the weights must come in model.trainable_variables order.
  saved = _weights(files / (name.split(".")[0].replace("_ckpt", "") + "_saved.npz"))
  params = params_from_keras(files / name, _like(saved))
  assert len(params) == len(saved)
  for ours, theirs in zip(params, saved, strict=True):
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
def test_subclassed_keras3_model_is_refused_with_the_fix(files):
  saved = _weights(files / "k3_sub_saved.npz")
  pattern = (r"k3_sub.keras: the model \(Sub: .*holds layers whose order the file does not "
             r"record.*order of their attribute names.*shapes fit more than one order.*"
             r"model.load_weights\(path\).*resume_from_keras\(model, like\)")
  with pytest.raises(ValueError, match=pattern):
    resume_from_keras(files / "k3_sub.keras", _like(saved))
  with pytest.raises(ValueError, match=pattern):
    params_from_keras(files / "k3_sub.keras", _like(saved))


@pytest.mark.slow
def test_live_subclassed_keras3_model_resumes_by_identity():
  # The fix the refusal names: the live model pairs variables by identity.
  import keras

  class Sub(keras.Model):
    def __init__(self):
      super().__init__()
      self.zeta = keras.layers.Dense(4, activation="tanh")
      self.alpha = keras.layers.Dense(4)

    def call(self, x):
      return self.alpha(self.zeta(x))

  rng = np.random.RandomState(7)
  x, y = rng.randn(16, 4).astype(np.float32), rng.randn(16, 4).astype(np.float32)
  keras.utils.set_random_seed(7)
  model = Sub()
  model.compile(keras.optimizers.Nadam(0.01, clipnorm=0.5), "mse")
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  like = _like([v.numpy() for v in model.trainable_variables])
  params, tx, state = resume_from_keras(model, like)
  for _ in range(STEPS):
    model.train_on_batch(x, y)
  theirs = [np.asarray(v.numpy()) for v in model.trainable_variables]
  ours, _ = _continue(tx, params, state, jnp.asarray(x), jnp.asarray(y))
  assert _gap(ours, theirs, "keras3 live subclassed model") <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k3_lso.keras", "k3_mixed.keras"])
def test_keras3_loss_scale_optimizer_state_is_refused_weights_read(files, name):
  saved = _weights(files / name.replace(".keras", "_saved.npz"))
  params = params_from_keras(files / name, _like(saved))
  for ours, theirs in zip(params, saved, strict=True):
    np.testing.assert_array_equal(ours, theirs)
  assert _read.read(files / name).wrapper == "LossScaleOptimizer"
  with pytest.raises(ValueError, match=rf"{name} holds a keras.optimizers.Nadam inside a "
                     r"LossScaleOptimizer.*never advances.*params_from_keras"):
    resume_from_keras(files / name, _like(saved))


@pytest.mark.slow
def test_tf_checkpoint_needs_the_epsilon_it_does_not_store(files):
  like = _like(_weights(files / "legacy_after.npz"))
  with pytest.raises(ValueError, match=r"legacy_ckpt is a TF checkpoint: it stores the Nadam's "
                     r"learning_rate, beta_1, beta_2 and decay.*not epsilon.*config="):
    resume_from_keras(files / "legacy_ckpt", like)
  with pytest.raises(ValueError, match=r"config\['beta_1'\] is 0.5 but the file has 0.89999"):
    resume_from_keras(files / "legacy_ckpt", like, config={"epsilon": 1e-7, "beta_1": 0.5})


@pytest.mark.slow
def test_keras_front_tx_is_compared_with_the_files_config(files):
  path = files / "k3_acc2.keras"
  config = optimizer_config_from_keras(path)
  like = _like(_weights(files / "k3_acc2_after.npz"))
  params = params_from_keras(path, like)
  state_from_keras(path, okeras.Nadam.from_config(config), params)  # 2 calls into 3: accepted
  wrong = okeras.Nadam.from_config({**config, "epsilon": 1e-6})  # 10x eps
  with pytest.raises(ValueError, match=r"k3_acc2.keras: tx's config is not the peer's "
                     r"\(epsilon: the peer has 1e-07, tx has 1e-06\)"):
    state_from_keras(path, wrong, params)
  state_from_keras(path, wrong, params, check_hyperparams=False)


def _hidden(tx):
  """tx as a plain optax transformation: the check must probe it, not read its config."""
  return optax.GradientTransformation(tx.init, tx.update)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k3_acc2.keras", "k3_ema.keras"])
def test_probed_tx_mid_accumulation(files, name):
  # 1 call into 3 was once not checked at all (the probe's update did not step).
  config = optimizer_config_from_keras(files / name)
  like = _like(_weights(files / name.replace(".keras", "_after.npz")))
  params = params_from_keras(files / name, like)
  state_from_keras(files / name, _hidden(okeras.Nadam.from_config(config)), params)
  lr = config["learning_rate"]
  doubled = {**config, "learning_rate": 2 * lr} if not isinstance(lr, dict) else {
      **config, "learning_rate": {**lr, "config": {**lr["config"], "initial_learning_rate":
                                                    2 * lr["config"]["initial_learning_rate"]}}}
  with pytest.raises(ValueError, match=r"not the peer's .*The peer's hyperparameters: "
                     r"learning_rate="):
    state_from_keras(files / name, _hidden(okeras.Nadam.from_config(doubled)), params)
  no_accumulation = {**config, "gradient_accumulation_steps": None}
  with pytest.raises(ValueError, match="(accumulates gradients over 3 update calls|into a "
                     "gradient accumulation cycle; tx has no optax.MultiSteps)"):
    state_from_keras(files / name, _hidden(okeras.Nadam.from_config(no_accumulation)), params,
                     sync_schedules=True)


def _rewrite_optimizer(src, dst, reorder, version):
  """A copy of a .keras file with its optimizer variables reordered and keras_version set."""
  import h5py

  with zipfile.ZipFile(src) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  buf = io.BytesIO(members["model.weights.h5"])
  with h5py.File(buf, "r+") as h5:
    group = h5["optimizer"]["vars"]
    old = [np.array(group[str(i)]) for i in range(len(group))]
    new = reorder(old)
    for k in list(group):
      del group[k]
    for i, a in enumerate(new):
      group[str(i)] = a
  members["model.weights.h5"] = buf.getvalue()
  meta = json.loads(members["metadata.json"])
  if version is None:
    meta.pop("keras_version")
  else:
    meta["keras_version"] = version
  members["metadata.json"] = json.dumps(meta).encode()
  with zipfile.ZipFile(dst, "w") as zf:
    for n, data in members.items():
      zf.writestr(n, data)


def _to_keras_3_0_layout(old):
  """Keras 3.10+ [it, avg..., acc..., (m, v)..., u] (EMA and accumulation, a schedule:
  no learning_rate variable) as Keras 3.0-3.9 writes it: [it, (avg, acc)..., u, (m, v)...]."""
  n = (len(old) - 2) // 4
  avg, acc, pairs = old[1:1 + n], old[1 + n:1 + 2 * n], old[1 + 2 * n:1 + 4 * n]
  inter = [x for pair in zip(avg, acc) for x in pair]
  return [old[0], *inter, old[-1], *pairs]


@pytest.mark.slow
def test_keras_3_0_to_3_9_layout_reads_like_the_new_one(files, tmp_path):
  # Real Keras 3.0.5 / 3.9.2 files were checked with tests/scripts/old_keras_check.py;
  # CI has one Keras, so the old layout is written here by hand from a 3.15 file.
  src = files / "k3_ema.keras"
  new = _read.read(src)
  for version in ("3.9.2", "3.5.0"):
    old_path = tmp_path / f"old_{version}.keras"
    _rewrite_optimizer(src, old_path, _to_keras_3_0_layout, version)
    old = _read.read(old_path)
    assert (old.count, old.mu_product, old.mini_step) == (new.count, new.mu_product,
                                                           new.mini_step)
    for a, b in zip([*old.m, *old.v, *old.ema, *old.accumulators],
                    [*new.m, *new.v, *new.ema, *new.accumulators], strict=True):
      np.testing.assert_array_equal(a, b)
  # The same bytes read with the 3.10+ layout would put EMA averages on moments:
  # the version decides, and shapes are checked.
  misread = tmp_path / "misread.keras"
  _rewrite_optimizer(src, misread, _to_keras_3_0_layout, "3.15.1")
  with pytest.raises(ValueError, match="misread.keras: the Nadam's .* does not have Keras 3.15's"):
    _read.read(misread)
  before_3_5 = tmp_path / "k34.keras"
  _rewrite_optimizer(src, before_3_5, _to_keras_3_0_layout, "3.4.1")
  like = _like(_weights(files / "k3_ema_after.npz"))
  with pytest.raises(ValueError, match=r"written by Keras 3.4 with gradient_accumulation_steps: "
                     "before Keras 3.5 the Nadam counted every call"):
    resume_from_keras(before_3_5, like)
  params_from_keras(before_3_5, like)  # the weights still read
  unversioned = tmp_path / "unversioned.keras"
  _rewrite_optimizer(src, unversioned, lambda old: old, None)
  with pytest.raises(ValueError, match="does not say which Keras wrote the file"):
    resume_from_keras(unversioned, like)


@pytest.mark.slow
@pytest.mark.parametrize("name,eps", [("k3_acc2.keras", 1e-6), ("legacy.h5", 1e-6),
                                      ("legacy.h5", 1e-8)])
def test_probed_tx_with_10x_eps_is_refused(files, name, eps):
  # On the usual probes a 10x eps moves the step by ~1e-6 of its size; the eps
  # probe (empty moments, a gradient the size of eps) sees it.
  config = optimizer_config_from_keras(files / name)
  like = _like(_weights(files / name.replace(".keras", "_after.npz").replace(
      ".h5", "_after.npz")))
  params = params_from_keras(files / name, like)
  good = _hidden(okeras.Nadam.from_config(config))
  state_from_keras(files / name, good, params)
  bad = _hidden(okeras.Nadam.from_config({**config, "epsilon": eps}))
  with pytest.raises(ValueError, match=r"not the peer's .*The peer's hyperparameters: .*"
                     r"eps=1e-07, "):
    state_from_keras(files / name, bad, params)


@pytest.mark.slow
def test_another_optimizer_saved_before_its_first_step_is_refused(tmp_path):
  import keras

  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile(keras.optimizers.Adam(0.01), "mse")
  model.save(tmp_path / "adam.keras")
  like = _like([np.zeros((3, 2)), np.zeros(2)])
  for call in (lambda: resume_from_keras(tmp_path / "adam.keras", like),
               lambda: state_from_keras(tmp_path / "adam.keras",
                                        okeras.Nadam(0.01, schedule_decay=1.0), like)):
    with pytest.raises(ValueError, match="adam.keras holds the state of a Adam optimizer, not "
                       "a Keras Nadam"):
      call()


@pytest.mark.slow
def test_live_keras3_loss_scale_optimizer_is_refused():
  # Under the jax backend the inner Nadam's u-product never advances: its steps are
  # not Nadam's, which the live optimizer shows (still 1.0 after 2 steps).
  import keras

  rng = np.random.RandomState(8)
  x, y = rng.randn(16, 3).astype(np.float32), rng.randn(16, 2).astype(np.float32)
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile(keras.optimizers.LossScaleOptimizer(keras.optimizers.Nadam(0.01)), "mse")
  model.fit(x, y, batch_size=8, epochs=1, verbose=0)
  with pytest.raises(ValueError, match=r"The Keras Nadam inside the LossScaleOptimizer has "
                     r"taken 2 steps but its u-product is still 1.0"):
    resume_from_keras(model, _like([np.zeros((3, 2)), np.zeros(2)]))


@pytest.mark.slow
@pytest.mark.parametrize("loss_scale", [False, True])
def test_live_tf_keras_model_resumes(loss_scale):
  import tf_keras

  rng = np.random.RandomState(9)
  x, y = rng.randn(16, 4).astype(np.float32), rng.randn(16, 4).astype(np.float32)
  tf_keras.utils.set_random_seed(9)
  model = tf_keras.Sequential([tf_keras.Input((4,)),
                               tf_keras.layers.Dense(4, activation="tanh"),
                               tf_keras.layers.Dense(4)])
  opt = tf_keras.optimizers.legacy.Nadam(0.01, clipvalue=0.5)
  if loss_scale:
    opt = tf_keras.mixed_precision.LossScaleOptimizer(opt)
  model.compile(opt, "mse")
  model.fit(x, y, batch_size=8, epochs=2, verbose=0)
  params, tx, state = resume_from_keras(model, _like([v.numpy()
                                                      for v in model.trainable_variables]))
  assert tx.get_config()["clipvalue"] == 0.5
  for _ in range(STEPS):
    model.train_on_batch(x, y)
  theirs = [v.numpy() for v in model.trainable_variables]
  ours, _ = _continue(tx, params, state, jnp.asarray(x), jnp.asarray(y))
  assert _gap(ours, theirs, f"tf-keras live model, loss scale {loss_scale}") <= TOL
