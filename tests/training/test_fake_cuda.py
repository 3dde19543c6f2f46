"""The CUDA branches, run on a machine without a GPU.

``FakeTensorMode`` makes tensors whose device is ``cuda:0`` (shapes, dtypes and devices are
propagated; no kernel runs), and the ``torch.cuda`` queries a run makes (availability, device
count, free memory) are monkeypatched. Inside a fake mode ``torch.cuda.is_available`` must stay
False: patched to True, the fake mode tries to reach a real device. ``scripts/gpu_check.sh``
runs the same paths for real on a GPU.
"""

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from s2vt.training import batches as batches_mod
from s2vt.training.batches import Batch, BatchStream, CaptionTable, FeatureBank, place_bank
from s2vt.training.objectives import CrossEntropy
from s2vt.runtime.devices import resolve as resolve_device
from s2vt.runtime.errors import ConfigError
from s2vt.features.store import FeatureStore, FeatureWriter
from s2vt.data.vocab import Vocab

pytestmark = pytest.mark.fake_cuda
WORDS = [f"w{i}" for i in range(20)]
GiB = 1 << 30


@pytest.fixture
def gpus(monkeypatch):
    """``n`` GPUs with ``free`` bytes each, as far as torch.cuda's queries go."""
    def make(n=2, free=80 * GiB):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GiB))
        for var in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK", "WORLD_SIZE"):
            monkeypatch.delenv(var, raising=False)
    return make


@pytest.fixture
def fake_cuda():
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A store of 4 videos (3..14 frames of 6-d features), two captions each."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("fake") / "f.h5"
    w = FeatureWriter(path, {"stream": "rgb", "dim": 6})
    items = []
    for i, n in enumerate([3, 14, 7, 9]):
        w.add(f"v{i}", rng.standard_normal((n, 6)).astype(np.float32), np.arange(n) * 10, {})
        items.append((f"v{i}", [" ".join(rng.choice(WORDS, rng.integers(1, 6))) for _ in range(2)]))
    w.finalize()
    store = FeatureStore(path)
    vids = [v for v, _ in items]
    return store, vids, CaptionTable(items, Vocab(WORDS), max_words=5, vids=vids)


# ----------------------------------------------------------------------------- devices

def test_cuda_devices_are_normalised_with_their_index(gpus, monkeypatch):
    gpus(n=2)
    assert resolve_device("cuda") == torch.device("cuda:0")  # torch.device("cuda") != torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on this machine
    assert resolve_device("cuda") == torch.device("cuda:1")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="cuda:2 .*2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        resolve_device("cuda")


def test_under_torchrun_each_process_takes_its_own_gpu_and_a_named_gpu_is_refused(gpus, monkeypatch, tmp_path):
    from types import SimpleNamespace

    from s2vt.apps.gpu_check import torchrun_command

    gpus(n=2)
    cmd = torchrun_command(SimpleNamespace(cuda=True, device="cuda:0", root=tmp_path, data=tmp_path,
                                           cpu_features=tmp_path / "f.h5", steps=2), tmp_path / "run")
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"  # one process per GPU
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    got = []
    for rank in (0, 1):  # what each of torchrun's processes makes of the command's --device
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        got.append(resolve_device(cmd[cmd.index("--device") + 1]))
    assert got == [torch.device("cuda:0"), torch.device("cuda:1")]
    with pytest.raises(ConfigError, match="--device cuda:1: torchrun runs 2 processes .* pass --device cuda"):
        resolve_device("cuda:1")  # both processes would take GPU 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per machine (several machines): its choice
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_extraction_under_torchrun_takes_its_own_gpu_and_share_of_cores(gpus, monkeypatch):
    from s2vt.features import config as config_mod
    from s2vt.features.extract import ExtractConfig

    gpus(n=2)
    monkeypatch.setattr(config_mod, "usable_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = ExtractConfig(device="cuda")
    assert resolve_device(cfg.device) == torch.device("cuda:1")
    assert cfg.decode_workers() == 7  # 16 cores shared by 2 processes, one core each for the CNN's process
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cfg.decode_workers() == 15


# ----------------------------------------------------------------------------- the feature bank

def test_bank_placement_for_given_free_memory(gpus, monkeypatch):
    monkeypatch.setattr(batches_mod, "available_memory", lambda: 64 * GiB)
    gpus(free=80 * GiB)
    assert place_bank(6 * GiB, torch.device("cuda")) == "device"
    gpus(free=6 * GiB)  # the GPU is short: 6 GiB (or 3) + 4 GiB headroom do not fit
    assert place_bank(6 * GiB, torch.device("cuda:0")) == "host"
    assert place_bank(40 * GiB, torch.device("cuda:0")) == "store"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # eight processes keep a host bank each
    assert place_bank(6 * GiB, torch.device("cuda:0")) == "store"  # 8 x 6 GiB would not fit in 64
    assert place_bank(3 * GiB, torch.device("cuda:0")) == "host"  # 64 GiB / (2 x 8) = 4 GiB each


def test_bank_on_the_gpu_is_the_training_devices_and_batches_are_gathered_there(corpus, fake_cuda, monkeypatch):
    store, vids, table = corpus
    bank = FeatureBank.build(store, vids, 8, device="cuda")
    assert bank.device == torch.device("cuda:0")
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # not implemented for fake tensors
    for shuffle in (False, True):
        stream = BatchStream(table, bank, "cuda", 8, shuffle_frames=shuffle, store=store)
        assert stream.on_device  # "cuda" is the bank's cuda:0
        got = list(stream.epoch([[0, 1, 2], [3, 4, 5, 6, 7]], 0))
        assert [len(b) for b in got] == [3, 5]
        for b in got:
            assert {t.device for t in (b.feats, b.words_in, b.targets, *b.device_lens)} == {torch.device("cuda:0")}
            assert b.feat_lens.device.type == "cpu" and b.word_lens.device.type == "cpu"  # packing reads them
            assert b.feats.shape == (len(b), 8, 6)  # every batch holds a video of 8 or more frames (capped to 8)


class CpuAllocations(TorchDispatchMode):
    """The largest host tensor created while active (bytes)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.startswith(("empty", "zeros", "full", "new_", "_to_copy", "clone")):
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_a_gpu_bank_is_filled_video_by_video_never_staged_whole_in_host_memory(corpus, fake_cuda):
    store, vids, _ = corpus
    with CpuAllocations() as cpu:
        bank = FeatureBank.build(store, vids, 0, device="cuda:0")
    whole = bank.feats.numel() * 4
    assert bank.feats.shape == (3 + 14 + 7 + 9 + 1, 6)
    assert cpu.largest < whole // 2  # at most one video's frames at a time (14 of 34 rows)


class RecordingCopies:
    """``CudaCopies`` on the CPU: copies are the tensors themselves, events are recorded."""

    class Event:
        def __init__(self, log, k):
            self.log, self.k = log, k

        def synchronize(self):
            self.log.append(("sync", self.k))

    def __init__(self):
        self.log, self.buffers, self.events = [], [], 0

    def pinned(self, numel, dtype):
        t = torch.empty(numel, dtype=dtype)
        self.buffers.append(t)
        return t

    def pin(self, t):
        return t

    def upload(self, tensors):
        ev = RecordingCopies.Event(self.log, self.events)
        self.log.append(("upload", self.events, tensors[0].data_ptr()))
        self.events += 1
        return [t.clone() for t in tensors], ev  # the device copy

    def ready(self, batch, event):
        self.log.append(("wait", event.k))
        return batch


def test_host_path_gathers_into_reused_pinned_buffers_and_waits_on_each_copy_alone(corpus):
    store, vids, table = corpus
    bank = FeatureBank.build(store, vids, 8)  # pageable host memory
    stream = BatchStream(table, bank, "cpu", 8, store=store)
    order = [stream.sort_batch(b) for b in ([0, 1], [2, 3, 4], [5, 6], [7])]
    plain = [stream.host_batch(idx, 0) for idx in order]
    copies = RecordingCopies()
    got = []
    for b in stream._uploaded(order, 0, copies):
        got.append(b)
        copies.log.append(("yield", len(got) - 1))
    for a, b in zip(plain, got):
        for name in ("feats", "feat_lens", "words_in", "targets", "word_lens"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert len(copies.buffers) == 2  # two pinned buffers, reused for every batch
    log = copies.log
    # batch k + 1 is uploaded before batch k is handed out; each batch waits for its own copy only
    assert log.index(("wait", 0)) > [i for i, e in enumerate(log) if e[:2] == ("upload", 1)][0]
    assert [e[1] for e in log if e[0] == "wait"] == [0, 1, 2, 3]
    # a buffer is refilled only after its previous copy finished: batch 2 reuses batch 0's buffer
    ptr = {e[1]: e[2] for e in log if e[0] == "upload"}
    assert ptr[2] == ptr[0] and ptr[3] == ptr[1] and ptr[0] != ptr[1]
    assert log.index(("sync", 0)) < [i for i, e in enumerate(log) if e[:2] == ("upload", 2)][0]


# ----------------------------------------------------------------------------- the training step

def test_lengths_moved_to_the_gpu_by_ddp_still_pack_on_the_cpu(fake_cuda):
    from torch.distributed.utils import _to_kwargs

    from s2vt.models.s2vt import step_lengths

    feats = torch.zeros(3, 5, 4, device="cuda")
    words = torch.ones(3, 4, dtype=torch.long, device="cuda")
    fl, wl = torch.tensor([5, 4, 2]), torch.tensor([4, 3, 3])
    moved, _ = _to_kwargs((feats, fl, words, words, wl, None), {}, torch.device("cuda:0"), False)
    (feats_m, fl_m, _, _, wl_m, _), = moved
    assert fl_m.device.type == "cuda"  # what DDP(device_ids=[i]) does to every tensor argument
    seq, fl_d, wl_d = step_lengths(fl_m, wl_m, None, feats_m.device)
    assert seq.device.type == "cpu" and fl_d.device == wl_d.device == torch.device("cuda:0")
    seq, _, _ = step_lengths(fl, wl, None, feats.device)
    assert seq.device.type == "cpu"


def fused_device_check(opt: torch.optim.Optimizer) -> None:
    """What the fused CUDA optimisers check before their kernel runs (fake tensors skip it): every state
    tensor of a parameter, ``step`` included, on that parameter's device; raised as the kernel words it."""
    from s2vt.runtime.devices import normalize

    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state[p].items():
                if isinstance(value, torch.Tensor) and normalize(value.device) != normalize(p.device):
                    raise RuntimeError(f"Expected all tensors to be on the same device, but found {key} on "
                                       f"{value.device} for a parameter on {p.device}")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_cpu_checkpoint_resumed_on_the_gpu_has_every_optimiser_state_tensor_on_its_parameters_device(optimizer):
    """A CPU run's optimiser (one real step: a non-empty state, fused=None) resumed on cuda:0 with the fused
    kernels: ``load_state_dict`` places ``step`` by the saved groups' flags, so they must be the device's."""
    import io
    from types import SimpleNamespace

    from s2vt.training.config import TrainConfig

    from s2vt.training.loop import make_optimizer, restore

    cfg = TrainConfig.from_dict(dict(lr=1e-3, optimizer=optimizer)).resolved()
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, cfg)
    model(torch.ones(4, 3)).square().sum().backward()
    opt.step()
    buf = io.BytesIO()
    torch.save({"weights": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, map_location="cpu", weights_only=True)  # as Checkpoint.load reads it
    assert saved["optimizer"]["param_groups"][0]["fused"] is None
    keys = {"adam": {"step", "exp_avg", "exp_avg_sq"}, "sgd": {"momentum_buffer"}}[optimizer]
    assert all(set(v) == keys for v in saved["optimizer"]["state"].values()) and saved["optimizer"]["state"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        with torch.device("cuda"):
            gpu_model = torch.nn.Linear(3, 2)
        gpu_opt = make_optimizer(gpu_model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(gpu_opt, lambda e: 1.0)
        ck = SimpleNamespace(weights=saved["weights"], optimizer=saved["optimizer"], scheduler=sched.state_dict(),
                             rng={"torch": torch.get_rng_state(), "cuda": None}, state={})
        restore(ck, gpu_model, gpu_opt, sched, torch.device("cuda:0"))
        assert gpu_opt.param_groups[0]["fused"] is True  # the fused kernels on the GPU, not the CPU run's default
        assert [set(gpu_opt.state[p]) for p in gpu_model.parameters()] == [keys, keys]  # the saved state, whole
        fused_device_check(gpu_opt)
        if optimizer == "adam":
            steps = [gpu_opt.state[p]["step"] for p in gpu_model.parameters()]
            assert all(s.dtype == torch.float32 and s.device == torch.device("cuda:0") for s in steps)


def test_fp32_on_the_gpu_means_ieee_fp32_and_extraction_lets_cudnn_pick_algorithms():
    from s2vt.runtime.devices import configure, cuda_settings

    saved = cuda_settings()
    try:
        configure("cpu", fp32=True, benchmark=True)
        assert cuda_settings() == saved  # nothing changes on the CPU
        configure("cuda", fp32=True, benchmark=True)  # as s2vt extract does on a GPU
        assert cuda_settings() == {"matmul_tf32": False, "cudnn_tf32": False, "cudnn_benchmark": True}
        configure("cuda:0", fp32=False)  # --amp / --bf16
        assert cuda_settings() == {"matmul_tf32": True, "cudnn_tf32": True, "cudnn_benchmark": False}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]


class OpDtypes(TorchDispatchMode):
    """(op name, floating dtypes of its tensor inputs, inside an LSTM) of every op while active."""

    def __init__(self):
        super().__init__()
        self.ops, self.in_lstm = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
        dts = {t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()}
        self.ops.append((func.__name__, dts, self.in_lstm > 0))
        return func(*args, **(kwargs or {}))


def test_every_op_of_the_amp_step_is_in_a_dtype_the_help_names(monkeypatch):
    """--amp: the linear layers in bf16 under autocast, the LSTMs in fp32 with autocast off (CUDA's autocast
    would send cuDNN's LSTM to fp16), the loss in fp32; nothing in fp16. Checked under CPU autocast, whose
    policy for these ops is the same; the LSTM check is the device-independent part."""
    from s2vt.models.s2vt import ModelConfig, S2VT
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import make_optimizer, train_step

    torch.manual_seed(0)
    model = S2VT(ModelConfig(feat_dim=6, vocab_size=12, embed=4, hidden=5, dropout=0.0))
    rec = OpDtypes()
    autocast_in_lstm = []

    def enter(mod, args):
        rec.in_lstm += 1
        autocast_in_lstm.append(torch.is_autocast_enabled("cpu"))
        x = args[0].data if hasattr(args[0], "batch_sizes") else args[0]
        assert x.dtype == torch.float32

    for lstm in (model.lstm1, model.lstm2):
        lstm.register_forward_pre_hook(enter)
        lstm.register_forward_hook(lambda mod, args, out: setattr(rec, "in_lstm", rec.in_lstm - 1))
    cfg = TrainConfig.from_dict(dict(amp=True, batch_size=2, lr=1e-3)).resolved()
    feats = torch.randn(2, 4, 6).to(torch.bfloat16)  # the bf16 feature bank
    words = torch.tensor([[1, 5, 6], [1, 7, 0]])
    targets = torch.tensor([[5, 6, 2], [7, 2, 0]])
    batch = Batch(feats, torch.tensor([4, 3]), words, targets, torch.tensor([3, 2]))
    opt = make_optimizer(model, cfg)
    with rec:
        loss, ok = train_step(model, CrossEntropy(model), opt, batch, cfg)
    assert autocast_in_lstm and not any(autocast_in_lstm)
    assert all(d <= {torch.float32, torch.bfloat16} for _, d, _ in rec.ops), "an op outside fp32/bf16"
    assert all(d <= {torch.float32} for name, d, inside in rec.ops if inside), "an LSTM op outside fp32"
    matmuls = [d for name, d, inside in rec.ops if name.startswith(("addmm", "mm", "bmm", "linear")) and not inside]
    assert {torch.bfloat16} in matmuls  # the projection and output layers under autocast
    assert loss.dtype == torch.float32 and bool(ok)


# ----------------------------------------------------------------------------- rules fake tensors skip

class CudnnRnnRule:
    """cuDNN's RNN backward refuses a module in eval mode ("cudnn RNN backward can only be called in
    training mode"); fake tensors and the CPU never run it. While active, every output of an LSTM call
    made in eval mode gets a gradient hook, so a backward pass that reaches one is recorded by the LSTM's
    name; ``dropouts`` records the mode of every dropout layer a gradient-carrying forward runs through."""

    def __init__(self, model):
        self.names = {m: n for n, m in model.named_modules()}
        self.violations, self.lstm_calls, self.dropouts = [], [], []

    def hook(self, module, args, out):
        if isinstance(module, torch.nn.Dropout) and torch.is_grad_enabled():
            self.dropouts.append(module.training)
        if not isinstance(module, torch.nn.LSTM):
            return
        name = self.names.get(module, "?")
        self.lstm_calls.append((name, module.training, torch.is_grad_enabled()))
        if module.training:
            return
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda g, name=name: self.violations.append(name))

    def __enter__(self):
        self.handle = torch.nn.modules.module.register_module_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def tiny_model(decoder: str, dropout: float = 0.3, device="cpu", vocab_size: int = 12):
    import warnings

    from s2vt.models.registry import build_model
    from s2vt.models.s2vt import ModelConfig

    torch.manual_seed(0)
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fake tensors warn when nn.Module's init reads their data pointer
        return build_model(ModelConfig(feat_dim=6, vocab_size=vocab_size, embed=4, hidden=5, dropout=dropout,
                                       decoder=decoder, max_words=4))


def tiny_batch(device="cpu") -> Batch:
    """Three videos of 5, 4 and 2 frames with captions of 3, 3 and 1 words, ordered by decreasing
    frames + words (as batches.py orders them); the lengths on the CPU and on ``device``."""
    feats = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))
    words = torch.tensor([[1, 5, 6, 7], [1, 7, 8, 9], [1, 10, 0, 0]])
    targets = torch.tensor([[5, 6, 7, 2], [7, 8, 9, 2], [10, 2, 0, 0]])
    fl, wl = torch.tensor([5, 4, 2]), torch.tensor([4, 4, 2])
    dev = lambda t: t.to(device)
    return Batch(dev(feats), fl, dev(words), dev(targets), wl, (dev(fl), dev(wl)), rows=torch.tensor([0, 1, 2]))


def tiny_scst(model, samples: int = 2):
    """The self-critical loss of ``model`` over the three videos of :func:`tiny_batch` (one reference each)."""
    from s2vt.training.scst import CiderD, SCSTLoss

    loss = SCSTLoss(model, CiderD([[[5, 6, 7, 8]], [[7, 8, 9, 10]], [[10, 11, 5, 6]]]), samples, model.cfg.max_words + 1)
    return loss


@pytest.mark.parametrize("objective", ["xe", "scst"])
@pytest.mark.parametrize("decoder", ["s2vt", "attention"])
def test_every_lstm_a_backward_pass_runs_through_is_in_training_mode(decoder, objective):
    """cuDNN's rule, emulated: the backward of an LSTM called in eval mode is recorded. SCST samples with
    dropout off and backpropagates through the same LSTMs: they stay in training mode, the dropout
    layers alone are switched off."""
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import make_optimizer, train_one_epoch, LoopState

    model = tiny_model(decoder)
    objective_fn = tiny_scst(model) if objective == "scst" else CrossEntropy(model)
    cfg = TrainConfig.from_dict(dict(batch_size=3, lr=1e-3, log_every=1000)).resolved()
    with CudnnRnnRule(model) as rule:
        train_one_epoch(model, objective_fn, make_optimizer(model, cfg), [tiny_batch()], cfg, LoopState())
    assert rule.violations == [], f"backward through LSTMs in eval mode: {sorted(set(rule.violations))}"
    with_grad = {(name, training) for name, training, grad in rule.lstm_calls if grad}
    assert {name for name, _ in with_grad} == {"lstm1", "lstm2"}  # the backward ran through both
    assert rule.dropouts and all(rule.dropouts) == (objective == "xe")  # SCST: every dropout off, xe: on


aten = torch.ops.aten
DATA_DEPENDENT = {aten.nonzero.default: "nonzero", aten.masked_select.default: "masked_select",
                  aten.multinomial.default: "multinomial"}  # multinomial's checks read two values back


def sync_of(func, args, kwargs, host, pinned) -> str:
    """The host-device sync ``func`` makes ('' for none); ``host(t)``: whether tensor ``t`` is in host memory;
    ``pinned``: the ids of the pinned host tensors."""
    if func is aten._local_scalar_dense.default:
        return "" if host(args[0]) else "item"                    # .item(), .tolist(), bool(t), int(t)
    if func in DATA_DEPENDENT:
        return "" if host(args[0]) else DATA_DEPENDENT[func]
    if func is aten.index.Tensor and not host(args[0]):
        masks = [i for i in args[1] if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)]
        return "boolean index" if masks else ""                   # a mask index is a nonzero
    if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None and not host(args[0]):
        return "repeat_interleave"
    if func in (aten._to_copy.default, aten.copy_.default):
        src, dst_host = (args[0], host(args[0]) if kwargs.get("device") is None
                         else torch.device(kwargs["device"]).type == "cpu") if func is aten._to_copy.default \
            else (args[1], host(args[0]))
        non_blocking = kwargs.get("non_blocking", False) or (len(args) > 2 and args[2])
        if not host(src) and dst_host:
            return "copy to host"                                  # .cpu(), .to("cpu"), .numpy() of a copy
        if host(src) and not dst_host and not (non_blocking and id(src) in pinned):
            return "pageable copy to the device"
    return ""


class HostSyncs(TorchDispatchMode):
    """The host-device syncs of what runs while active, on fake CUDA tensors (enter it inside a
    ``FakeTensorMode``): a device value read (``.item()``, ``.tolist()``, ``bool(t)``), a copy to the host
    (``.cpu()``), an op whose output size is data (``nonzero``, a boolean index, ``multinomial``), and a
    host-to-device copy that is not a ``non_blocking`` copy of pinned memory (``pin`` stands in for
    ``Tensor.pin_memory`` and remembers what it pinned). Ops on host tensors alone run for real, so the
    lengths that packing reads have values, and packing's output size is computed from them; a value
    read from the device reads as one (True), and a copy to the host holds ones."""

    def __init__(self):
        super().__init__()
        self.syncs, self.pinned, self.kept = [], set(), []

    def pin(self, t):
        out = t.clone()
        self.kept.append(out)  # alive while counted, so that its id stays its own
        self.pinned.add(id(out))
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._python_dispatch import _disable_current_modes

        kwargs = kwargs or {}
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        on_gpu = any(isinstance(x, FakeTensor) or (isinstance(x, torch.device) and x.type == "cuda") for x in leaves)
        if not on_gpu and str(kwargs.get("device", "cpu")).startswith("cpu"):
            with _disable_current_modes():
                return func(*args, **kwargs)                       # host work: real values
        kind = sync_of(func, args, kwargs, lambda t: t.device.type == "cpu", self.pinned)
        if kind:
            self.syncs.append(kind)
        if func is aten._local_scalar_dense.default:
            dt = args[0].dtype                                      # a placeholder value: fakes hold none
            return True if dt == torch.bool else 1.0 if dt.is_floating_point else 1
        if kind == "copy to host":                                 # ones stand in for the values read
            if func is aten.copy_.default:
                return args[0]
            with _disable_current_modes():
                return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is aten.nonzero.default:                           # data-dependent sizes: empty stand-ins
            return args[0].new_empty((0, args[0].dim()), dtype=torch.long)
        if kind in ("boolean index", "masked_select"):
            return args[0].new_empty((0,))
        if func is aten._pack_padded_sequence.default:
            x, lens, batch_first = args
            with _disable_current_modes():
                _, batch_sizes = func(torch.zeros(x.shape[:2] + (1,)), lens, batch_first)
                n = int(batch_sizes.sum())
            return x.new_empty((n, *x.shape[2:])), batch_sizes
        return func(*args, **kwargs)


class BackwardReads(TorchDispatchMode):
    """The syncs a backward pass would make on a GPU, seen on real CPU tensors: every tensor of a
    backward lives on the training device, so any value read or data-dependent size is one."""

    def __init__(self):
        super().__init__()
        self.syncs, self.ops = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        kind = sync_of(func, args, kwargs or {}, lambda t: False, ())
        if kind:
            self.syncs.append(kind)
        return func(*args, **(kwargs or {}))


def test_the_sync_counter_sees_every_kind_of_sync(monkeypatch):
    counter = HostSyncs()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: counter.pin(t))
    host = torch.arange(4)
    with FakeTensorMode(allow_non_fake_inputs=True), counter:
        x = torch.ones(4, device="cuda")
        x.cpu(), x.sum().item(), x.tolist(), bool(x.sum() > 0), x.nonzero(), x[x > 0]
        torch.multinomial(x, 1)
        host.to("cuda"), host.to("cuda", non_blocking=True), host.pin_memory().to("cuda", non_blocking=True)
        assert int(host.sum()) == 6  # host work runs for real: no sync
        x + 1, torch.zeros(3, device="cuda"), x.repeat_interleave(2)
    assert counter.syncs == ["copy to host", "item", *["item"] * 4, "item", "nonzero", "boolean index",  # tolist: 4 reads
                             "multinomial", "pageable copy to the device", "pageable copy to the device"]


class BarStub:
    def set_postfix(self, **kw):
        pass


def step_syncs(corpus, tmp_path, monkeypatch, decoder: str, objective: str, log_every: int) -> list:
    """The syncs of one training step on cuda:0 (fake): building its batch from the device bank, the
    forward, the optimiser step and, with ``log_every`` 1, the step's log line. The backward cannot run on
    fake CUDA tensors (the autograd engine asks the driver for the device): here it sets zero gradients,
    and :func:`backward_syncs` counts the real one on the CPU."""
    from types import SimpleNamespace

    from s2vt.training.config import TrainConfig

    from s2vt.training.loop import LoopState, RunWriter, make_optimizer, train_one_epoch

    store, vids, table = corpus
    counter = HostSyncs()
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: counter.pin(t))
    cfg = TrainConfig.from_dict(dict(batch_size=3, lr=1e-3, log_every=log_every)).resolved()
    data = SimpleNamespace(sampler=SimpleNamespace(batches_per_epoch=lambda: 2), vocab=Vocab(WORDS))
    writer = RunWriter(tmp_path, cfg, data, rank=0, fresh=True)
    # cuDNN's LSTM asks the driver for the device; the native LSTM reads the same host lengths
    with FakeTensorMode(allow_non_fake_inputs=True), torch.backends.cudnn.flags(enabled=False):
        stream = BatchStream(table, FeatureBank.build(store, vids, 8, device="cuda"), "cuda", 8, store=store)
        model = tiny_model(decoder, device="cuda", vocab_size=len(Vocab(WORDS)))
        objective_fn = tiny_scst(model) if objective == "scst" else CrossEntropy(model)
        opt = make_optimizer(model, cfg)
        zero = lambda loss, *a, **k: [setattr(p, "grad", torch.zeros_like(p)) for p in model.parameters()] and None
        monkeypatch.setattr(torch.Tensor, "backward", zero)
        batches = (b.with_rows(torch.tensor([0, 1, 2])) for b in stream.epoch([[0, 1, 2], [3, 4, 5]], 0))
        next(batches)  # the epoch's set-up (its order copied once) and first batch, outside the count
        with counter:
            train_one_epoch(model, objective_fn, opt, batches, cfg, LoopState(step=1),
                            on_step=lambda st, stats: writer.log_train(st, stats, opt, 1, BarStub()) if st.step % log_every == 0 else None)
    monkeypatch.undo()
    return counter.syncs


def backward_syncs(decoder: str, objective: str) -> tuple:
    """The syncs of one training step's backward pass (on real CPU tensors, every tensor counted as the
    device's) and the number of ops it ran."""
    from s2vt.training.config import TrainConfig
    from s2vt.training.loop import make_optimizer, train_step

    model = tiny_model(decoder)
    objective_fn = tiny_scst(model) if objective == "scst" else CrossEntropy(model)
    cfg = TrainConfig.from_dict(dict(batch_size=3, lr=1e-3)).resolved()
    reads, backward = BackwardReads(), torch.Tensor.backward

    def counted(loss, *a, **k):
        with reads:
            backward(loss, *a, **k)

    torch.Tensor.backward = counted
    try:
        train_step(model, objective_fn, make_optimizer(model, cfg), tiny_batch(), cfg)
    finally:
        torch.Tensor.backward = backward
    return reads.syncs, reads.ops


SYNC_BUDGET = {"xe": 0, "scst": 1}  # host-device syncs per training step, by objective
LOG_READS = 1  # and one on a logged step (every --log-every): the loss sum and the finite flag, read together


@pytest.mark.parametrize("objective", ["xe", "scst"])
@pytest.mark.parametrize("decoder", ["s2vt", "attention"])
def test_host_syncs_per_training_step_are_held_to_their_budget(corpus, tmp_path, monkeypatch, decoder, objective):
    """The GPU never waits on the host: a cross-entropy step reads nothing back (lengths travel with the
    batch, packing orders rows on the host and copies the order from pinned memory), and a logged step
    reads the loss once. SCST needs one read per step, the sampled and greedy captions: their CIDEr-D
    rewards are scored on the host (the reference n-gram tables are host data, and the candidates' n-gram
    counts have data-dependent sizes); the advantages go back from pinned memory, and words are drawn
    without ``multinomial``'s checks, which read two values back at every word."""
    step = step_syncs(corpus, tmp_path / "step", monkeypatch, decoder, objective, log_every=1000)
    logged = step_syncs(corpus, tmp_path / "logged", monkeypatch, decoder, objective, log_every=1)
    back, ops = backward_syncs(decoder, objective)
    assert len(step) <= SYNC_BUDGET[objective], step
    assert step == ["copy to host"] * SYNC_BUDGET[objective]  # SCST's one: the captions to score
    assert len(logged) <= SYNC_BUDGET[objective] + LOG_READS, logged
    assert ops > 100 and back == []  # the backward ran under the counter and read nothing back


# ----------------------------------------------------------------------------- TF32 off where results call themselves fp32

class Reached(BaseException):
    """Raised where an entry point starts its networks (past any ``except Exception``)."""


@pytest.fixture
def tf32_left_on():
    """The CUDA switches as an --amp training or a bf16 extraction earlier in the process leaves them."""
    from s2vt.runtime.devices import cuda_settings

    saved = cuda_settings()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]


def script(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reach(monkeypatch, target: str, name: str) -> None:
    def stop(*a, **k):
        raise Reached(name)

    monkeypatch.setattr(target + "." + name, stop)


IEEE = {"matmul_tf32": False, "cudnn_tf32": False}


def test_every_entry_point_that_runs_a_network_on_the_gpu_sets_ieee_fp32_first(gpus, tf32_left_on, monkeypatch,
                                                                               tmp_path):
    from s2vt.evaluation.benchmark import benchmark
    from s2vt.cli import main
    from s2vt.runtime.devices import cuda_settings
    from s2vt.apps.study import evaluate_rows

    gpus(n=1)
    runs = {
        "evaluate": ("s2vt.captioning.captioner.Captioner", "from_members", lambda: main(
            ["evaluate", "--checkpoint", str(tmp_path / "a.pt"), "--features", str(tmp_path / "a.h5"), "--dataset",
             "synthetic", "--annotations", str(tmp_path), "--device", "cuda", "--out", str(tmp_path / "e.json")])),
        "benchmark and the demo's evaluation": ("s2vt.evaluation.benchmark", "shared_meteor", lambda: benchmark([], tmp_path, {}, "cuda")),
        "the study's evaluation": ("s2vt.apps.study", "load_truth", lambda: evaluate_rows(
            tmp_path, None, tmp_path, None, tmp_path, [0], "cuda", None)),
        "bench_decode": (None, "S2VT", lambda mod: mod.main(mod.parse_args(["--device", "cuda"]))),
        "bench_backbones": (None, "rate", lambda mod: mod.main(mod.parse_args(["--device", "cuda"]))),
    }
    monkeypatch.setattr("s2vt.evaluation.benchmark.check_spec", lambda spec: [])
    for what, (target, name, run) in runs.items():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        mod = script(what) if target is None else None
        if mod is not None:
            monkeypatch.setattr(mod, name, lambda *a, **k: (_ for _ in ()).throw(Reached(name)))
        else:
            reach(monkeypatch, target, name)
        with pytest.raises(Reached):
            run(mod) if mod is not None else run()
        got = cuda_settings()
        assert {k: got[k] for k in IEEE} == IEEE, what  # the networks start in IEEE fp32
        assert got["cudnn_benchmark"] == (what == "bench_backbones"), what  # timed as s2vt extract runs


def test_raft_runs_in_ieee_fp32_under_precision_bf16(tf32_left_on):
    from s2vt.runtime.devices import cuda_settings
    from s2vt.features.raft import LearnedFlow

    seen = []

    class Net(torch.nn.Module):
        def forward(self, a, b, num_flow_updates):
            seen.append(cuda_settings())
            return [torch.zeros(a.shape[0], 2, *a.shape[2:])]

    flow = LearnedFlow.__new__(LearnedFlow)
    torch.nn.Module.__init__(flow)
    flow.net = Net()
    out = flow(torch.zeros(1, 6, 128, 128, dtype=torch.uint8))
    assert out.shape == (1, 3, 128, 128) and out.dtype == torch.uint8
    assert {k: seen[0][k] for k in IEEE} == IEEE  # RAFT is documented to run in fp32
    assert cuda_settings()["cudnn_tf32"] and cuda_settings()["matmul_tf32"]  # the CNN's bf16 settings, restored
