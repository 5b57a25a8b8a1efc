"""Continuing a Keras / TF run from its files: `params_from_keras`, `state_from_keras`.

The files are written by the real peers in a separate process
(`tests/scripts/keras_files_writer.py`): Keras 3 ``model.fit`` + ``model.save`` with
a custom layer whose class exists only in that process, tf-keras legacy Nadam
``model.save('x.h5')`` and ``tf.train.Checkpoint``. The peer then continued 20
steps on a fixed batch; here optax continues from the file on the same batch
and must land within 1e-5 (max |diff| / max |param|). ``pytest -s`` prints
every gap.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_nadam
from optax_nadam.interop import keras as interop  # params_from_keras, state_from_keras
from optax_nadam.interop.keras import _read as keras_files
from tests.helpers import reference as ref

TOL = 1e-5
LR = 0.01
STEPS = 20


def _data(files):
  d = np.load(files / "data.npz")
  return jnp.asarray(d["x"]), jnp.asarray(d["y"])


def _weights(path):
  z = np.load(path)
  return [z[f"w{i}"] for i in range(len(z.files))]


def _mlp_loss(params, x, y):
  """Dense(4, tanh) [-> x * scale + shift] -> Dense(2), mean squared error."""
  if len(params) == 6:
    w1, b1, scale, shift, w2, b2 = params
    h = jnp.tanh(x @ w1 + b1) * scale + shift
  else:
    w1, b1, w2, b2 = params
    h = jnp.tanh(x @ w1 + b1)
  return jnp.mean((h @ w2 + b2 - y) ** 2)


def _continue_with_state(tx, params, state, x, y):
  return ref.continue_on_loss(tx, params, state, _mlp_loss, x, y, steps=STEPS)


def _continue(tx, params, state, x, y):
  return _continue_with_state(tx, params, state, x, y)[0]


def _gap(ours, theirs, name):
  scale = max(float(np.max(np.abs(t))) for t in theirs)
  gap = max(float(np.max(np.abs(np.asarray(o, np.float64) - t))) for o, t in zip(ours, theirs))
  print(f"\nfile resume gap, {name}: {gap / scale:.2e} (max |diff| / max |param| after "
        f"{STEPS} more steps)")
  return gap / scale


def _like(shapes):
  return [jnp.zeros(s, jnp.float32) for s in shapes]


K3_SHAPES = [(3, 4), (4,), (4,), (4,), (4, 2), (2,)]
LEGACY_SHAPES = [(3, 4), (4,), (4, 2), (2,)]
CASES = {
    # file, shapes, psi, weights after the peer's 20 more steps
    "keras3_custom_layer": ("k3.keras", K3_SHAPES, 1.0, "k3_after.npz"),
    "tf_keras_legacy_h5": ("legacy.h5", LEGACY_SHAPES, 0.004, "legacy_after.npz"),
    "tf_checkpoint_prefix": ("legacy_ckpt/ckpt-1", LEGACY_SHAPES, 0.004, "legacy_after.npz"),
    "tf_checkpoint_dir": ("legacy_ckpt", LEGACY_SHAPES, 0.004, "legacy_after.npz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_file_resumes_the_peers_run(files, case):
  name, shapes, psi, after = CASES[case]
  x, y = _data(files)
  tx = optax_nadam.nadam(LR, eps=1e-7, momentum_decay=psi)
  params = interop.params_from_keras(files / name, _like(shapes))
  state = interop.state_from_keras(str(files / name), tx, params)
  theirs = _weights(files / after)
  assert _gap(_continue(tx, params, state, x, y), theirs, case) <= TOL
  # Control: the same params with a fresh optimizer state miss the run.
  fresh = _continue(tx, params, tx.init(params), x, y)
  assert _gap(fresh, theirs, f"control, {case} with a fresh state") > 30 * TOL


@pytest.mark.slow
def test_keras3_file_mid_accumulation_with_ema_schedule_and_weight_decay(files):
  from optax_nadam import keras as okeras

  path = files / "k3_ema.keras"
  x, y = _data(files)
  config = interop.optimizer_config_from_keras(path)
  assert config["use_ema"] and config["gradient_accumulation_steps"] == 3
  tx = okeras.Nadam.from_config(config)
  params = interop.params_from_keras(path, _like(LEGACY_SHAPES))
  state = interop.state_from_keras(path, tx, params)
  params, state = _continue_with_state(tx, params, state, x, y)
  assert _gap(params, _weights(files / "k3_ema_after.npz"), "keras3_ema_accumulation") <= TOL
  average = _weights(files / "k3_ema_average.npz")
  assert _gap(jax.tree.leaves(state.ema), average, "keras3 EMA averages") <= TOL


@pytest.mark.slow
def test_keras3_file_saved_before_the_first_step_gives_a_fresh_state(files):
  path = files / "k3_unbuilt.keras"
  tx = optax_nadam.nadam(LR, eps=1e-7, momentum_decay=1.0)
  params = interop.params_from_keras(path, _like(LEGACY_SHAPES))
  state = interop.state_from_keras(path, tx, params)
  jax.tree.map(np.testing.assert_array_equal, state, tx.init(params))
  with pytest.raises(ValueError, match="learning_rate"):  # the config is still checked
    interop.state_from_keras(path, optax_nadam.nadam(0.02, momentum_decay=1.0), params)


@pytest.mark.slow
def test_custom_layer_class_is_not_importable_here(files):
  # The archive names a class only the writer process had: Keras cannot load it,
  # the reader above never needed it.
  import keras

  with pytest.raises(Exception, match="ScaleShift"):
    keras.saving.load_model(files / "k3.keras")


@pytest.mark.slow
def test_keras3_batch_norm_moving_statistics_are_not_params(files):
  like = _like([(3, 4), (4,), (4,), (4,), (4, 2), (2,)])
  params = interop.params_from_keras(files / "k3_bn.keras", like)
  for ours, theirs in zip(params, _weights(files / "k3_bn_saved.npz"), strict=True):
    np.testing.assert_array_equal(ours, theirs)
  names = keras_files.read(files / "k3_bn.keras").names
  assert names == ["layers/dense/vars/0 (kernel)", "layers/dense/vars/1 (bias)",
                   "layers/batch_normalization/vars/0 (gamma)",
                   "layers/batch_normalization/vars/1 (beta)",
                   "layers/dense_1/vars/0 (kernel)", "layers/dense_1/vars/1 (bias)"]
  state = interop.state_from_keras(files / "k3_bn.keras", optax_nadam.nadam(
      LR, eps=1e-7, momentum_decay=1.0), params)
  assert int(state[0].count) == 1


@pytest.mark.slow
def test_layout_is_applied_to_weights_and_moments(files):
  def transpose_kernels(path, a):
    assert isinstance(path, str) and path.startswith("[")
    return a.T if a.ndim == 2 else a

  tx = optax_nadam.nadam(LR, eps=1e-7, momentum_decay=1.0)
  shapes = [s[::-1] for s in K3_SHAPES]
  params = interop.params_from_keras(files / "k3.keras", _like(shapes), layout=transpose_kernels)
  state = interop.state_from_keras(files / "k3.keras", tx, params, layout=transpose_kernels)
  plain = interop.params_from_keras(files / "k3.keras", _like(K3_SHAPES))
  plain_state = interop.state_from_keras(files / "k3.keras", tx, plain)
  for a, b, ma, mb in zip(params, plain, state[0].m, plain_state[0].m, strict=True):
    np.testing.assert_array_equal(a, np.asarray(b).T)
    np.testing.assert_array_equal(ma, np.asarray(mb).T)
  with pytest.raises(ValueError, match=r"k3.keras: Keras variable 'layers/dense/vars/0 \(kernel\)' "
                     r"\(params leaf \[0\]\) has shape \(4, 3\).*\(after layout\)"):
    interop.params_from_keras(files / "k3.keras", _like(K3_SHAPES), layout=transpose_kernels)


@pytest.mark.slow
def test_keras3_file_needs_keras3_momentum_schedule(files):
  params = interop.params_from_keras(files / "k3.keras", _like(K3_SHAPES))
  with pytest.raises(ValueError, match="momentum_decay = 1.*k3.keras: Keras variable 0"):
    interop.state_from_keras(files / "k3.keras", optax_nadam.nadam(LR, eps=1e-7), params)


# ------------------------------------------------------------------------------ bad files


def test_missing_path_is_named(tmp_path):
  missing = tmp_path / "nope.keras"
  with pytest.raises(FileNotFoundError, match="nope.keras"):
    interop.params_from_keras(missing, _like(LEGACY_SHAPES))
  with pytest.raises(FileNotFoundError, match="nope.keras"):
    interop.state_from_keras(str(missing), optax_nadam.nadam(LR), _like(LEGACY_SHAPES))


def test_files_of_other_formats_are_refused(tmp_path):
  import h5py

  text = tmp_path / "notes.keras"
  text.write_text("hello")
  npz = tmp_path / "arrays.keras"
  with open(npz, "wb") as f:
    np.savez(f, a=np.ones(3))
  h5 = tmp_path / "data.h5"
  with h5py.File(h5, "w") as f:
    f["x"] = np.ones(3)
  cases = [(text, "is not a Keras 3 archive"), (npz, "a zip but not a Keras 3 archive"),
           (h5, "HDF5 file but not a tf-keras model")]
  for path, message in cases:
    with pytest.raises(ValueError, match=message):
      interop.params_from_keras(path, _like(LEGACY_SHAPES))


@pytest.mark.slow
def test_truncated_files_are_refused(files, tmp_path):
  for name in ("k3.keras", "legacy.h5"):
    blob = (files / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match=f"{name}.*truncated or damaged"):
      interop.params_from_keras(cut, _like(LEGACY_SHAPES))
  ckpt = tmp_path / "ckpt"
  shutil.copytree(files / "legacy_ckpt", ckpt)
  data = next(p for p in ckpt.iterdir() if ".data-" in p.name)
  data.write_bytes(data.read_bytes()[:40])
  with pytest.raises(ValueError, match="truncated or damaged"):
    interop.params_from_keras(ckpt / "ckpt-1", _like(LEGACY_SHAPES))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k3_adam.keras", "legacy_adam.h5", "legacy_adam_ckpt"])
def test_another_optimizers_state_is_refused_but_weights_read(files, name):
  params = interop.params_from_keras(files / name, _like(LEGACY_SHAPES))
  before = [np.array(p) for p in params]
  with pytest.raises(ValueError, match=r"Adam optimizer, not a Keras Nadam.*no momentum cache"):
    interop.state_from_keras(files / name, optax_nadam.nadam(LR), params)
  for a, b in zip(params, before):  # a refused file changes nothing
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["k3.keras", "legacy.h5", "legacy_ckpt"])
def test_count_and_shape_mismatches_name_file_variable_and_leaf(files, name):
  shapes = K3_SHAPES if name == "k3.keras" else LEGACY_SHAPES
  tx = optax_nadam.nadam(LR, eps=1e-7, momentum_decay=1.0 if name == "k3.keras" else 0.004)
  with pytest.raises(ValueError, match=rf"{name} holds {len(shapes)} trainable weights.*"
                     r"like has 3 leaves \(\['\[0\]'"):
    interop.params_from_keras(files / name, _like(shapes[:3]))
  wrong = _like(shapes[:1] + [(5,)] + shapes[2:])
  with pytest.raises(ValueError, match=rf"{name}: Keras variable .* \(params leaf \[1\]\) has "
                     r"shape \(4,\); the params leaf has \(5,\)"):
    interop.params_from_keras(files / name, wrong)
  with pytest.raises(ValueError, match=rf"{name}: Keras variable 1 .*params leaf \[1\].*shape"):
    interop.state_from_keras(files / name, tx, wrong)
  with pytest.raises(ValueError, match=rf"{name} holds Nadam slots for {len(shapes)} variables"):
    interop.state_from_keras(files / name, tx, _like(shapes[:3]))
  bad = _like(shapes)
  bad[0] = bad[0].astype(jnp.bfloat16)
  with pytest.raises(ValueError, match=r"params leaf \[0\]\) has dtype float32"):
    interop.params_from_keras(files / name, bad)
  with pytest.raises(TypeError, match="var_list"):
    interop.state_from_keras(files / name, tx, _like(shapes), var_list=[0] * len(shapes))


def test_non_finite_weights_are_refused(tmp_path):
  # A legacy-layout .h5 written by hand (no peer needed for this check).
  import h5py

  path = tmp_path / "nan.h5"
  with h5py.File(path, "w") as f:
    g = f.create_group("model_weights")
    g.attrs["layer_names"] = [b"dense"]
    layer = g.create_group("dense")
    layer.attrs["weight_names"] = [b"dense/kernel:0"]
    layer["dense/kernel:0"] = np.array([[1.0, np.nan]], np.float32)
  with pytest.raises(ValueError, match=r"nan.h5: Keras variable 'dense/kernel:0' \(params leaf "
                     r"\[0\]\) holds NaN"):
    interop.params_from_keras(path, _like([(1, 2)]))
  assert os.path.exists(path)


HYPER_MISMATCHES = {
    # file, tx built with one hyperparameter off, the name the message lists
    "keras3_learning_rate": ("k3.keras", dict(learning_rate=0.02, momentum_decay=1.0),
                             "learning_rate"),
    "keras3_weight_decay": ("k3.keras", None, "weight_decay"),
    "legacy_h5_eps": ("legacy.h5", dict(eps=1e-3), "eps"),
    "tf_checkpoint_b2": ("legacy_ckpt", dict(b2=0.99), "b2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HYPER_MISMATCHES))
def test_hyperparameter_mismatch_is_refused_unless_opted_out(files, case):
  name, change, field = HYPER_MISMATCHES[case]
  path = files / name
  if change is None:  # decoupled weight decay the peer (weight_decay=None) does not have
    tx = optax_nadam.nadamw(LR, eps=1e-7, momentum_decay=1.0, weight_decay=0.05)
  else:
    tx = optax_nadam.nadam(**{**dict(learning_rate=LR, eps=1e-7, momentum_decay=0.004),
                              **change})
  shapes = K3_SHAPES if name == "k3.keras" else LEGACY_SHAPES
  params = interop.params_from_keras(path, _like(shapes))
  with pytest.raises(ValueError, match=rf"{name}: Keras variable 0 .*not the peer's .*The "
                     rf"peer's hyperparameters: .*\b{field}=.*"
                     "The tx that continues the peer's run: .*check_hyperparams=False"):
    interop.state_from_keras(path, tx, params)
  state = interop.state_from_keras(path, tx, params, check_hyperparams=False)
  assert int(jax.tree.leaves(state)[0]) >= 1
