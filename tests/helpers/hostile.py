"""A corpus of hostile checkpoint files, built on demand (nothing binary is checked in).

Each `Case` builds its file(s) in a directory with the libraries an attacker would
use (h5py, zlib, struct, pickle, torch.save) and names the public call that reads
them and what that call must raise. `tests/scripts/hostile_probe.py` runs the
cases in a fresh interpreter and measures each one's peak memory and time;
`tests/interop/test_hostile_files.py` asserts on its results.

The files are small on disk; what they declare is not: datasets of 2 GiB and
4 TiB that store nothing, zip members that inflate to 1 GiB from 4.5 MB,
external storage pointing at a secret file, ``/dev/zero`` or a FIFO.
"""

import pathlib
from typing import Callable, Dict, List, NamedTuple, Optional

from tests.helpers import hostile_makers as make
from tests.helpers.hostile_files import (  # noqa: F401  (re-exported for the tests)
    BIAS,
    ENORMOUS,
    HUGE,
    KERNEL,
    LIKE_SHAPES,
    SECRET,
    deflated,
    keras_config,
    keras_h5_bytes,
    keras_zip,
    legacy_h5,
    stored,
    zip_bytes,
)


class Case(NamedTuple):
  """One hostile file: how to build it, how to read it, what the reader must say."""

  name: str
  build: Callable[[pathlib.Path], str]  # writes into a directory, returns the path to read
  call: str  # "params" | "state" | "config" | "torch" (see hostile_probe.CALLS)
  error: Optional[str]  # the exception's class name; None: the read must succeed
  match: str  # a regex the message must match (re.search)
  no_tensorflow: bool = False  # the refusal must not import TensorFlow



FF = "FileFormatError"
CASES: List[Case] = [
    # controls: the same builders, nothing hostile, read fine
    Case("ok_legacy_h5", lambda d: legacy_h5(d / "ok.h5"), "params", None, ""),
    Case("ok_keras", lambda d: keras_zip(d / "ok.keras"), "params", None, ""),
    Case("ok_keras_config", lambda d: keras_zip(d / "ok.keras"), "config", None, ""),
    Case("ok_torch", make.torch_ok, "torch", None, ""),
    # HDF5 external storage, links, virtual datasets
    Case("h5_external_secret", make.h5_case(make.external(make.secret, (3, 4), 48)),
         "params", FF, r"model\.h5: dataset /model_weights/dense/dense/kernel:0 keeps its data "
         r"in other files \['.*secret\.bin'\] \(HDF5 external storage\)"),
    Case("h5_external_devzero",
         make.h5_case(make.external(lambda d: "/dev/zero", (HUGE,), 4 * HUGE)),
         "params", FF, r"kernel:0 keeps its data in other files \['/dev/zero'\]"),
    Case("h5_external_fifo", make.h5_case(make.external(make.fifo, (3, 4), 48)), "params", FF,
         r"kernel:0 keeps its data in other files \['.*pipe'\]"),
    Case("keras_external_secret",
         make.h5_case(make.external(make.secret, (3, 4), 48), keras=True),
         "params", FF, r"model\.keras: model\.weights\.h5: dataset /layers/dense/vars/0 keeps "
         r"its data in other files"),
    Case("h5_external_link", make.h5_case(make.external_link), "params", FF,
         r"model\.h5: /model_weights/dense/dense/kernel:0 is an HDF5 external link to "
         r".*secret\.h5:/data"),
    Case("h5_soft_link", make.h5_case(make.soft_kernel("/model_weights/dense/dense/bias:0")),
         "params", FF, r"kernel:0 is an HDF5 soft link to /model_weights/dense/dense/bias:0"),
    Case("h5_dangling_soft_link", make.h5_case(make.soft_kernel("/nowhere")), "params", FF,
         r"kernel:0 is an HDF5 soft link to /nowhere"),
    Case("h5_virtual", make.h5_case(make.virtual), "params", FF,
         r"dataset /model_weights/dense/dense/kernel:0 is a virtual dataset .*secret\.h5"),
    Case("keras_hard_link_cycle",
         lambda d: keras_zip(d / "model.keras", weights=keras_h5_bytes(extra=make.cycle)),
         "params", FF, r"/layers/dense/loop is /layers again \(a hard link\)"),
    # declared sizes
    Case("h5_huge_chunked", make.h5_case(make.huge((HUGE,), (1 << 20,))), "params", FF,
         r"dataset /model_weights/dense/dense/kernel:0 declares shape \(536870912,\) float32 "
         r"\(536870912 elements\), more than any leaf of like holds \(the largest of its 2 "
         r"leaves has 12\); refused before reading it"),
    Case("h5_huge_contiguous", make.h5_case(make.huge((HUGE,), None)), "params", FF,
         r"kernel:0 declares shape \(536870912,\) float32 \(536870912 elements\), more than any "
         r"leaf of like holds"),
    Case("h5_enormous_chunked", make.h5_case(make.huge((ENORMOUS,), (1 << 20,))), "params", FF,
         r"kernel:0 declares shape \(1099511627776,\) float32 \(1099511627776 elements\), more "
         r"than any leaf"),
    Case("keras_huge_chunked", make.h5_case(make.huge((HUGE,), (1 << 20,)), keras=True),
         "params", FF,
         r"dataset /layers/dense/vars/0 declares shape \(536870912,\) float32 .*more than any "
         r"leaf of like holds"),
    Case("h5_huge_config_only", make.h5_case(make.huge((HUGE,), None)), "config", FF,
         r"kernel:0 declares 2147483648 bytes; .* passes the \d+ bytes this import may read "
         r"\(the file size\)"),
    Case("h5_unwritten_small", make.h5_case(make.huge((3, 4), (1, 4))), "params", FF,
         r"kernel:0 declares 48 bytes but stores 0 \(unwritten or cut off\)"),
    Case("h5_huge_state", make.h5_case(make.huge((HUGE,), (1 << 20,))), "state", FF,
         r"kernel:0 declares shape \(536870912,\) float32 \(536870912 elements\), more than any "
         r"leaf of like holds"),
    # zip bombs and lying headers
    Case("keras_bomb_config", make.bomb_member("config.json"), "params", FF,
         r"zip member 'config\.json' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_weights", make.bomb_member("model.weights.h5"), "params", FF,
         r"zip member 'model\.weights\.h5' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_metadata", make.bomb_member("metadata.json"), "params", FF,
         r"zip member 'metadata\.json' declares 1073741824 bytes .*decompression bomb"),
    Case("keras_bomb_config_only", make.bomb_member("model.weights.h5"), "config", FF,
         r"decompression bomb"),
    Case("keras_lying_sizes", make.lying_small, "params", FF,
         r"model\.keras: zip member 'config\.json' .*(more than the 2048|damaged)"),
    Case("keras_lying_local_header", make.lying_local, "params", FF,
         r"model\.keras: zip member 'config\.json'.*local header"),
    Case("keras_lying_stored", make.lying_stored, "params", FF,
         r"zip member 'model\.weights\.h5' is stored \(not compressed\) but declares "
         r"2147483648 bytes and holds \d+"),
    Case("keras_stored_past_end", make.stored_past_end, "params", FF,
         r"zip member 'model\.weights\.h5' declares 2147483648 stored bytes .*past the end of "
         r"the file"),
    # JSON
    Case("keras_deep_json", lambda d: keras_zip(d / "model.keras", config=make.deep(100_000)),
         "params", FF, r"model\.keras: config\.json nests deeper than 200 levels"),
    Case("keras_deep_json_config",
         lambda d: keras_zip(d / "model.keras", config=make.deep(100_000)),
         "config", FF, r"config\.json nests deeper than 200"),
    Case("keras_json_list", make.keras_cfg([1, 2, 3]), "params", FF,
         r"model\.keras: config\.json is a list; expected an object"),
    Case("keras_json_layers_wrong", make.keras_cfg({"config": {"layers": [1, "x"]}}), "params", FF,
         r"config\.json: config\.layers\[0\] is an int; expected an object"),
    Case("keras_json_optimizer_wrong",
         make.keras_cfg(keras_config({"class_name": "Nadam", "config": {
             "learning_rate": 0.01, "gradient_accumulation_steps": "many"}})),
         "state", FF, r"compile_config\.optimizer\.config\.gradient_accumulation_steps is a str; "
         r"expected an int"),
    Case("keras_optimizer_os_system",
         make.keras_cfg(keras_config({"module": "os", "class_name": "system", "config": {}})),
         "config", FF, r"optimizer class is os\.system, not one of Keras's optimizers"),
    Case("keras_invalid_json", lambda d: keras_zip(d / "model.keras", config=b"{'x': nan"),
         "params", FF, r"config\.json is not valid JSON"),
    Case("h5_training_config_list", lambda d: legacy_h5(d / "model.h5", training_config="[1]"),
         "params", FF, r"model\.h5: training_config is a list; expected an object"),
    Case("h5_training_config_deep",
         lambda d: legacy_h5(d / "model.h5", training_config=make.deep(100_000).decode()),
         "params", FF, r"training_config nests deeper than 200 levels"),
    # random, empty, truncated, not files
    Case("random_keras", make.random("random.keras", 4096), "params", FF, r"is not a Keras 3"),
    Case("random_h5_magic", lambda d: make.random_h5(d), "params", FF, r"truncated or damaged"),
    Case("empty_file", make.empty("empty.keras"), "params", FF, r"is not a Keras 3"),
    Case("truncated_keras", make.truncated_keras, "params", FF,
         r"cut\.keras.*(damaged|past the end)"),
    Case("truncated_h5", make.truncated_h5, "params", FF, r"cut\.h5.*truncated or damaged"),
    Case("directory", make.directory, "params", "IsADirectoryError",
         r"^\S*not_a_checkpoint is a directory but not a TF checkpoint", no_tensorflow=True),
    Case("symlink_loop", make.loop("loop.keras"), "params", FF, r"loop\.keras: a symlink loop",
         no_tensorflow=True),
    Case("fifo", lambda d: make.fifo(d), "params", FF, r"pipe is a FIFO \(named pipe\), not a "
         r"regular file", no_tensorflow=True),
    Case("dev_zero", make.path("/dev/zero"), "params", FF,
         r"/dev/zero is a character device, not a regular file"),
    Case("ckpt_dir_fifo", make.ckpt_dir_fifo, "params", FF,
         r"ckpt_dir/checkpoint is a FIFO \(named pipe\)", no_tensorflow=True),
    Case("ckpt_dir_escapes", make.ckpt_dir_escape, "params", FF,
         r"ckpt_dir/checkpoint points outside its directory", no_tensorflow=True),
    Case("ckpt_shard_fifo", make.shard(None), "params", FF,
         r"ckpt-1\.data-00000-of-00001 is a FIFO \(named pipe\)", no_tensorflow=True),
    Case("ckpt_shard_devzero", make.shard("/dev/zero"), "params", FF,
         r"ckpt-1\.data-00000-of-00001 is a character device", no_tensorflow=True),
    Case("ckpt_index_random", make.index_random, "params", FF,
         r"ckpt-1\.index is not a TF checkpoint index", no_tensorflow=True),
    # torch readers
    Case("torch_random", make.random("random.pt", 4096), "torch", "ValueError",
         r"random\.pt' is not a readable torch\.save file"),
    Case("torch_empty", make.empty("empty.pt"), "torch", "ValueError",
         r"empty\.pt' is not a readable torch\.save file"),
    Case("torch_truncated", make.truncated_torch, "torch", "ValueError",
         r"cut\.pt' is not a readable torch\.save file"),
    # A folder is a torch source (HF Trainer, DCP): one that is neither is refused by name.
    Case("torch_directory", make.directory, "torch", FF,
         r"not_a_checkpoint' is not a checkpoint this reader knows: no \.metadata"),
    Case("torch_fifo", lambda d: make.fifo(d), "torch", FF, r"pipe is a FIFO"),
    Case("torch_symlink_loop", make.loop("loop.pt"), "torch", FF, r"loop\.pt: a symlink loop"),
    Case("torch_dev_zero", make.path("/dev/zero"), "torch", FF, r"is a character device"),
    Case("torch_zip_bomb", make.torch_bomb, "torch", FF,
         r"bomb\.pt': zip member '.*data/0' declares 1073741824 bytes .*decompression bomb"),
    Case("torch_huge_storage", make.torch_huge_storage, "torch", "ValueError",
         r"huge\.pt' is not a readable torch\.save file .*record size \(\d+ bytes\) does not "
         r"match expected size \(2147483648 bytes"),
    Case("torch_raw_pickle", make.raw_pickle, "torch", "ValueError",
         r"evil\.pt' holds Python objects .*calls posix\.system"),
    Case("torch_zip_pickle", make.zip_pickle, "torch", "ValueError",
         r"evil_zip\.pt' holds Python objects .*posix\.system"),
]


def by_name() -> Dict[str, Case]:
  return {c.name: c for c in CASES}


def build(case: Case, root: pathlib.Path) -> str:
  """Builds `case` in its own directory under `root` and returns the path to read."""
  d = root / case.name
  d.mkdir(parents=True, exist_ok=True)
  path = case.build(d)
  (d / "PATH").write_text(path)
  return path
