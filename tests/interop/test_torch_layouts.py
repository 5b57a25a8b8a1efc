"""resume_from_torch on checkpoints laid out the way training stacks write them.

Each case trains a real torch module with NAdam for a few steps on fixed
gradients, saves it the way its stack does (Lightning, Hugging Face Trainer,
DDP, torch.compile, DCP: by hand where the stack is not a dependency), resumes
with one call, and continues 20 steps next to torch on the same gradients:
the gap (`tests.helpers.reference.gap`, printed with ``pytest -s``) must be
<= 1e-5. Where the pairing cannot be proven the import is refused.
"""

import argparse
import json
import pathlib

import jax
import numpy as np
import pytest
import torch

from optax_nadam import _tree, interop
from optax_nadam.transform import ScaleByNadamState
from tests.helpers.reference import continue_optax, gap
from tests.helpers.torch_runs import LR, TOL, ModuleRun, nested, write_safetensors

STEPS = 5


@pytest.fixture(autouse=True)
def _seeded():
  torch.manual_seed(0)  # the modules' initial weights: every measured gap is reproducible


def _resume_and_compare(run, source, label, like=None, **kwargs):
  """Resume from `source`, continue MORE steps next to torch; returns the gap."""
  params, tx, opt_state = interop.resume_from_torch(source, run.like() if like is None else like,
                                                     **kwargs)
  for ours, theirs in zip(jax.tree.leaves(params), run.values(), strict=True):
    np.testing.assert_array_equal(ours, theirs)
  grads = [nested(g) for g in run.grads[STEPS:]]
  ours = continue_optax(tx, opt_state, params, grads)
  measured = gap(ours, run.run(run.grads[STEPS:]), label)
  assert measured <= TOL
  return measured


class Block(torch.nn.Module):
  """Linear (no bias), LayerNorm, Linear (no bias): equal shapes that sorting reorders."""

  def __init__(self):
    super().__init__()
    self.up = torch.nn.Linear(4, 4, bias=False)
    self.norm = torch.nn.LayerNorm(4)
    self.down = torch.nn.Linear(4, 4, bias=False)


class Net(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.fc1 = torch.nn.Linear(3, 5)
    self.fc2 = torch.nn.Linear(5, 2)


# ------------------------------------------------------------------ Lightning .ckpt


def test_lightning_ckpt_with_objects_in_hyper_parameters(tmp_path):
  run = ModuleRun(Net())
  run.run(run.grads[:STEPS])
  sd = {f"model.{k}": v for k, v in run.module.state_dict().items()}  # self.model = Net()
  ckpt = {
      "epoch": 0, "global_step": STEPS, "pytorch-lightning_version": "2.4.0",
      "state_dict": sd, "loops": {}, "callbacks": {},
      "optimizer_states": [run.opt.state_dict()],
      "lr_schedulers": [{"last_epoch": STEPS, "base_lrs": [LR], "_step_count": STEPS + 1}],
      "hparams_name": "kwargs",
      "hyper_parameters": {"data_dir": pathlib.Path("/data/x"),
                           "args": argparse.Namespace(lr=LR, out=pathlib.Path("o"))},
  }
  path = tmp_path / "epoch=0-step=5.ckpt"
  torch.save(ckpt, path)
  with pytest.raises(Exception, match="Weights only load failed"):
    torch.load(path, weights_only=True)  # what made the file unreadable before
  _resume_and_compare(run, path, "Lightning .ckpt (model. prefix, optimizer_states, Path and "
                      "Namespace in hyper_parameters)")


def test_a_payload_outside_hyper_parameters_is_still_refused(tmp_path):
  run = ModuleRun(Net())
  path = tmp_path / "evil.ckpt"
  torch.save({"state_dict": run.module.state_dict(), "optimizer_states": [run.opt.state_dict()],
              "callbacks": {"x": pathlib.Path("p")}}, path)
  with pytest.raises(ValueError, match=r"evil\.ckpt' holds Python objects .*PosixPath"):
    interop.resume_from_torch(path, run.like())


# ------------------------------------------------------------- DDP, torch.compile, tied


def test_ddp_and_compile_prefixes(tmp_path):
  run = ModuleRun(Net(), opt_spec=lambda named: [(f"module._orig_mod.{n}", p)
                                                 for n, p in named.items()])
  run.run(run.grads[:STEPS])
  sd = {f"module._orig_mod.{k}": v for k, v in run.module.state_dict().items()}
  torch.save({"model": sd, "optimizer": run.opt.state_dict()}, tmp_path / "ddp.pt")
  _resume_and_compare(run, tmp_path / "ddp.pt", "DDP module. + torch.compile _orig_mod. names")


class Tied(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.emb = torch.nn.Embedding(6, 4)
    self.mid = torch.nn.Linear(4, 4)
    self.head = torch.nn.Linear(4, 6, bias=False)
    self.head.weight = self.emb.weight  # tied: one parameter, two state-dict keys


def test_tied_weights_fill_one_leaf(tmp_path):
  run = ModuleRun(Tied())
  assert len(run.named) == 3 and len(run.module.state_dict()) == 4
  run.run(run.grads[:STEPS])
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "tied.pt")
  _resume_and_compare(run, tmp_path / "tied.pt", "tied embedding / head weights")


def test_sequential_names_into_a_list_of_layers(tmp_path):
  seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
  run = ModuleRun(seq)
  run.run(run.grads[:STEPS])
  torch.save({"model": seq.state_dict(), "optimizer": run.opt.state_dict()}, tmp_path / "s.pt")
  like = run.like()
  assert sorted(like) == ["0", "2"]
  _resume_and_compare(run, tmp_path / "s.pt", "nn.Sequential names (0.weight)")


# --------------------------------------------------------------------- param groups


def _llrd(named, reverse=True, names=False):
  """Layer-wise lr decay: one group per block, the last block first (as LLRD recipes do)."""
  blocks = [[(n, p) for n, p in named.items() if n.startswith(f"{b}.")] for b in range(3)]
  order = range(2, -1, -1) if reverse else range(3)
  return [dict(params=[x if names else x[1] for x in blocks[b]], lr=LR * 0.8 ** (2 - b))
          for b in order]


def _blocks():
  return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])


def test_layerwise_lr_decay_without_names_is_refused(tmp_path):
  run = ModuleRun(_blocks(), opt_spec=_llrd)
  run.run(run.grads[:STEPS])
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "llrd.pt")
  with pytest.raises(ValueError, match=r"llrd\.pt'\['optimizer'\]: which params leaf each of "
                     r"the optimizer's 6 parameters belongs to cannot be proven: it has 3 param "
                     r"groups.*equal shapes .*\(4, 4\) at torch parameters \[0, 2, 4\].*"
                     r"model\.named_parameters\(\).*param_names=") as refused:
    interop.resume_from_torch(tmp_path / "llrd.pt", run.like())
  print(f"\nrefused (LLRD, no names): {refused.value}")
  names = [[n for n in run.named if n.startswith(f"{b}.")] for b in (2, 1, 0)]
  _resume_and_compare(run, tmp_path / "llrd.pt", "LLRD groups in reverse, param_names= given",
                      param_names=names)


def test_layerwise_lr_decay_with_torchs_param_names(tmp_path):
  run = ModuleRun(_blocks(), opt_spec=lambda named: _llrd(named, names=True))
  run.run(run.grads[:STEPS])
  sd = run.opt.state_dict()
  assert sd["param_groups"][0]["param_names"] == ["2.weight", "2.bias"]
  torch.save({"model": run.module.state_dict(), "optimizer": sd}, tmp_path / "llrd.pt")
  _, _, opt_state = interop.resume_from_torch(tmp_path / "llrd.pt", run.like())
  # optax.multi_transform: one nadam per learning rate
  assert len(_tree.find_nodes(opt_state, ScaleByNadamState)) == 3
  _resume_and_compare(run, tmp_path / "llrd.pt", "LLRD groups in reverse, torch's param_names")


@pytest.mark.parametrize("kwargs", [dict(weight_decay=0.05), dict(maximize=True),
                                    dict(weight_decay=0.05, decoupled_weight_decay=True),
                                    dict(betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.01)])
def test_tx_comes_from_the_checkpoints_hyperparameters(tmp_path, kwargs):
  run = ModuleRun(Net(), **kwargs)
  run.run(run.grads[:STEPS])
  torch.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
             tmp_path / "hp.pt")
  _resume_and_compare(run, tmp_path / "hp.pt", f"tx from the param group {kwargs}")


# ------------------------------------------------------------- Hugging Face folders


def _trainer_groups(named, names=False):
  """The HF Trainer's two groups: decay (not biases, not norms), then no decay."""
  decay = [n for n in named if n.endswith("weight") and "norm" not in n]
  rest = [n for n in named if n not in decay]
  pick = (lambda n: (n, named[n])) if names else (lambda n: named[n])
  return [dict(params=[pick(n) for n in decay], weight_decay=0.01),
          dict(params=[pick(n) for n in rest], weight_decay=0.0)]


def _hf_folder(tmp_path, run, sharded=False):
  folder = tmp_path / "checkpoint-5"
  folder.mkdir()
  sd = run.module.state_dict()
  if sharded:
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[:2],
              "model-00002-of-00002.safetensors": names[2:]}
    for shard, keys in shards.items():
      write_safetensors(folder / shard, {k: sd[k] for k in keys})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0},
         "weight_map": {k: s for s, keys in shards.items() for k in keys}}, sort_keys=True))
  else:
    write_safetensors(folder / "model.safetensors", sd)
  torch.save(run.opt.state_dict(), folder / "optimizer.pt")
  torch.save({"last_epoch": STEPS, "_step_count": STEPS + 1}, folder / "scheduler.pt")
  (folder / "trainer_state.json").write_text(json.dumps({"global_step": STEPS, "epoch": 1.0}))
  return folder


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_folder_without_names_is_refused_then_continues_with_names(tmp_path, sharded):
  run = ModuleRun(Block(), opt_spec=_trainer_groups, decoupled_weight_decay=True)
  run.run(run.grads[:STEPS])
  folder = _hf_folder(tmp_path, run, sharded)
  with pytest.raises(ValueError, match=r"optimizer\.pt: which params leaf .* cannot be proven: "
                     r"it has 2 param groups.*\(4, 4\) at torch parameters \[0, 1\]; \(4,\) at "
                     r"torch parameters \[2, 3\].*param_names=") as refused:
    interop.resume_from_torch(folder, run.like())
  print(f"\nrefused (HF folder, no names): {refused.value}")
  names = [[g for g in grp] for grp in ([n for n in run.named if n in ("up.weight", "down.weight")],
                                        ["norm.weight", "norm.bias"])]
  _resume_and_compare(run, folder, f"HF folder ({'sharded ' if sharded else ''}safetensors + "
                      "optimizer.pt, two Trainer groups, param_names=)", param_names=names)


def test_hf_folder_with_pytorch_model_bin_in_model_order(tmp_path):
  run = ModuleRun(Block())  # one group over model.parameters(): torch's order is proof
  run.run(run.grads[:STEPS])
  folder = tmp_path / "ck"
  folder.mkdir()
  torch.save(run.module.state_dict(), folder / "pytorch_model.bin")
  torch.save(run.opt.state_dict(), folder / "optimizer.pt")
  _resume_and_compare(run, folder, "HF folder (pytorch_model.bin + optimizer.pt, one group)")
  write_safetensors(folder / "model.safetensors", run.module.state_dict())
  (folder / "pytorch_model.bin").unlink()
  with pytest.raises(ValueError, match=r"its model's names are sorted \(safetensors"):
    interop.resume_from_torch(folder, run.like())


def test_hf_folder_with_sharded_pytorch_model_bin(tmp_path):
  run = ModuleRun(Net())  # unique shapes: the index file's sorted names still pair by shape
  run.run(run.grads[:STEPS])
  folder = tmp_path / "ck"
  folder.mkdir()
  sd = run.module.state_dict()
  shards = {"pytorch_model-00001-of-00002.bin": ["fc1.weight", "fc1.bias"],
            "pytorch_model-00002-of-00002.bin": ["fc2.weight", "fc2.bias"]}
  for shard, keys in shards.items():
    torch.save({k: sd[k] for k in keys}, folder / shard)
  (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}},
      sort_keys=True))
  torch.save(run.opt.state_dict(), folder / "optimizer.pt")
  _resume_and_compare(run, folder, "HF folder (sharded pytorch_model.bin + index, one group)")


# ------------------------------------------------------------------------------- DCP


def test_distributed_checkpoint_directory(tmp_path):
  import torch.distributed.checkpoint as dcp

  run = ModuleRun(Net())
  run.run(run.grads[:STEPS])
  dcp.save({"model": run.module.state_dict(), "optimizer": run.opt.state_dict()},
           checkpoint_id=str(tmp_path / "dcp"))
  assert (tmp_path / "dcp" / ".metadata").is_file()
  _resume_and_compare(run, tmp_path / "dcp", "torch distributed checkpoint (string state keys)")


def test_dcp_metadata_naming_another_class_is_refused(tmp_path):
  import pickle

  class Payload:
    def __reduce__(self):
      import os
      return (os.system, ("echo pwned",))

  (tmp_path / "dcp").mkdir()
  (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))
  with pytest.raises(ValueError, match=r"\.metadata' names posix\.system, which is not a "
                     "checkpoint-metadata class; refusing to unpickle it"):
    interop.resume_from_torch(tmp_path / "dcp", {"w": np.zeros(3, np.float32)})


def test_state_from_torch_follows_the_same_rule(tmp_path):
  import optax_nadam

  run = ModuleRun(Block(), opt_spec=_trainer_groups)
  run.run(run.grads[:STEPS])
  folder = _hf_folder(tmp_path, run)
  tx = optax_nadam.nadam(LR, eps=1e-8)
  like = run.like()
  with pytest.raises(ValueError, match=r"cannot be proven: it has 2 param groups"):
    interop.state_from_torch(folder, tx, like, check_hyperparams=False)
  names = [["up.weight", "down.weight"], ["norm.weight", "norm.bias"]]
  state = interop.state_from_torch(folder, tx, like, param_names=names, check_hyperparams=False)
  want = run.opt.state_dict()["state"]
  np.testing.assert_array_equal(state[0].m["norm"]["bias"], want[3]["exp_avg"].numpy())
  np.testing.assert_array_equal(state[0].m["down"]["weight"], want[1]["exp_avg"].numpy())


def test_torchs_param_names_with_a_list_like_pair_by_the_other_rules():
  import optax_nadam

  run = ModuleRun(Net(), opt_spec=lambda named: list(named.items()))  # param_names written
  run.run(run.grads[:STEPS])
  assert run.opt.state_dict()["param_groups"][0]["param_names"] == list(run.named)
  mid = [p.detach().numpy().copy() for p in run.named.values()]  # a list: no names
  tx = optax_nadam.nadam(LR, eps=1e-8)
  state = interop.state_from_torch(run.opt, tx, mid)  # one group: the optimizer's order
  for leaf, p in zip(state[0].m, run.named.values()):
    np.testing.assert_array_equal(leaf, run.opt.state[p]["exp_avg"].numpy())
