"""Training at scale on CPU: DDP (gloo, 2 ranks) agrees across ranks and runs; shards read
every flow once; the large-batch schedule; the GPU scorer's batch shapes; and, where a GPU
is present (the device machine, never CI), steps replayed as CUDA graphs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp
from serve_helpers import free_port
from shard_memory import build_store

from semiflow.detector.models.flow_inference import bucket
from semiflow.detector.models.semiflow_flowlevel import FlowSemiFlowDetector
from semiflow.detector.models.semiflow_flownet import FlowNetConfig, GroupedBatchNorm1d
from semiflow.detector.models.train_loop import (
    MAX_LR_FACTOR,
    DistContext,
    FitOptions,
    lr_schedule,
    rank_share,
    scaled_lr,
    steps_per_epoch,
    world_size_caveat,
)
from semiflow.plugin.flowstore import FlowStore
from semiflow.training.dataset import flow_matrix
from semiflow.training.flow_shards import ShardedFlows
from semiflow.training.train import train

TINY = FlowNetConfig(length=128, k=4, byte_channels=(4, 8), packet_dim=8, hidden=16,
                     latent_dim=4, flow_blocks=2, flow_hidden=16, epochs=(2, 2, 1),
                     min_service_flows=5, batch_size=16)


def flows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 4, 128), np.uint8)
    X[:, :, 0] = 0x45
    X[:, :, 9] = 6
    X[:, :, 2:4] = rng.integers(0, 4, (n, 4, 2))
    X[:, 0, 62:64] = [0, 80]
    X[:, :, 120:128] = rng.integers(0, 255, (n, 4, 8))
    return X


def _rank(rank: int, world: int, port: int, out: str, opts: FitOptions) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with DistContext.from_env("cpu") as dist:
        det = FlowSemiFlowDetector(TINY, device="cpu", random_state=0).fit(
            flows(256), flows(64, 1), options=opts, dist=dist)
    assert not torch.distributed.is_initialized()        # the context left the job
    state = {f"{m}.{k}": v for m, mod in det._modules().items()
             for k, v in mod.state_dict().items()}
    torch.save({"state": state, "history": det.history_,
                "scores": det.anomaly_score(flows(32, 2))}, f"{out}/rank{rank}.pt")


def _ddp(tmp_path, tag: str, opts: FitOptions | None = None) -> list[dict]:
    out = tmp_path / tag
    out.mkdir()
    tmp.spawn(_rank, args=(2, free_port(), str(out), opts or FitOptions(batch_size=32)),
              nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_ddp_gloo_ranks_agree_and_repeat(tmp_path):
    a0, a1 = _ddp(tmp_path, "a")
    assert a0["state"].keys() == a1["state"].keys()
    for k in a0["state"]:
        assert torch.equal(a0["state"][k], a1["state"][k]), k     # one model, two ranks
    untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in x["history"]]
               for x in (a0, a1)]
    assert untimed[0] == untimed[1]                                # same early stopping
    assert sum(h["flows"] for h in a0["history"]) == 256 * 4       # both halves trained
    np.testing.assert_array_equal(a0["scores"], a1["scores"])
    b0, _ = _ddp(tmp_path, "b")                                    # deterministic given seed
    for k in a0["state"]:
        assert torch.equal(a0["state"][k], b0["state"][k]), k


def test_two_ranks_train_as_one_process_with_fixed_norm_groups(tmp_path):
    """BatchNorm groups of 16 flows inside a global batch of 32: one process normalises the
    batch's two halves, and each of two ranks holds one of them (rank_share), so both train
    the same model up to floating-point order (with whole-batch statistics they did not:
    one H200 at batch 8192 val rec 0.15, two 0.016; docs/scale.md)."""
    opts = FitOptions(batch_size=32, norm_group=16)
    two, _ = _ddp(tmp_path, "g", opts)
    one = FlowSemiFlowDetector(TINY, device="cpu", random_state=0).fit(
        flows(256), flows(64, 1), options=opts)
    assert [(h["stage"], h["epoch"], h["flows"]) for h in one.history_] == \
        [(h["stage"], h["epoch"], h["flows"]) for h in two["history"]]
    for a, b in zip(one.history_, two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4, abs=1e-5)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3, abs=1e-4)
    assert np.corrcoef(one.anomaly_score(flows(32, 2)), two["scores"])[0, 1] > 0.999


def test_fit_trains_with_deterministic_kernels_and_restores_them():
    seen = []
    det = FlowSemiFlowDetector(TINY, device="cpu", random_state=0,
                               log=lambda _: seen.append(torch.backends.cudnn.deterministic))
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    det.fit(flows(64), flows(16, 1))
    assert seen and all(seen)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before


def test_world_size_caveat_when_ranks_do_not_hold_whole_norm_groups():
    assert world_size_caveat(8192, 2, 512) is None              # 4096 a rank: 8 groups
    assert world_size_caveat(64, 1, 512) is None                # one process: nothing to say
    assert "depend on the number of GPUs" in world_size_caveat(1024, 4, 512)   # 256 a rank
    assert "4 x 512" in world_size_caveat(6000, 4, 512)
    assert world_size_caveat(1024, 2, 0) is not None            # whole-batch statistics


def test_rank_share_splits_every_global_batch():
    order = np.random.default_rng(0).permutation(103)
    shares = [rank_share(order, 8, r, 3) for r in range(3)]
    assert [len(x) for x in shares] == [34, 34, 34]            # 96 in batches + 2 each of 7
    for b in range(4):                                          # rank r: block r of batch b
        for r in range(3):
            np.testing.assert_array_equal(shares[r][8 * b:8 * b + 8],
                                          order[24 * b + 8 * r:24 * b + 8 * r + 8])
    np.testing.assert_array_equal(np.concatenate([x[32:] for x in shares]), order[96:102])
    assert steps_per_epoch(103, 8, 3) == 5
    t = torch.from_numpy(order)
    assert torch.equal(rank_share(t, 8, 1, 3), torch.from_numpy(shares[1]))
    assert rank_share(order, 8, 0, 1) is order
    assert len(rank_share(order[:50], 8, 0, 2)) == 24          # 1 each left: sits out


def test_grouped_batchnorm_normalises_each_group():
    torch.manual_seed(0)
    x = torch.randn(24, 3, 10) * 3 + 1
    g = GroupedBatchNorm1d(3)
    plain = torch.nn.BatchNorm1d(3)
    plain.load_state_dict(g.state_dict())
    g.group = 8
    y = g(x)
    for i in range(0, 24, 8):
        part = x[i:i + 8]
        ref = (part - part.mean((0, 2), keepdim=True)) / torch.sqrt(
            part.var((0, 2), unbiased=False, keepdim=True) + g.eps)
        torch.testing.assert_close(y[i:i + 8], ref, atol=1e-5, rtol=1e-5)
    same = GroupedBatchNorm1d(3)                 # three equal groups move the running
    same.group = 8                               # statistics as one batch does
    same(x[:8].repeat(3, 1, 1))
    plain(x[:8])
    torch.testing.assert_close(same.running_mean, plain.running_mean)
    torch.testing.assert_close(same.running_var, plain.running_var, atol=1e-5, rtol=1e-3)
    g.eval()
    plain.eval()
    plain.load_state_dict(g.state_dict())
    torch.testing.assert_close(g(x), plain(x))                 # evaluation: unchanged


def test_semiflow_train_ddp_under_torchrun_writes_rank_0s_artifact(tmp_path, store):
    """The command itself, 2 gloo ranks: one artifact (rank 0's), one report, exit 0."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", str(free_port()), "-m", "semiflow", "train",
                        str(store.path), "-o", str(tmp_path / "m"), "--ddp", "--device", "cpu",
                        "--flow-config", "cpu", "--epochs", "1", "--batch-size", "32",
                        "--max-flows", "0", "-q"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("model written to") == 1, r.stdout
    prov = json.loads((tmp_path / "m" / "provenance.json").read_text())
    assert prov["metrics"]["world_size"] == 2


def test_lr_option_sets_the_peak_rate(tmp_path, store, monkeypatch):
    """`semiflow train --lr` reaches the optimiser of every stage instead of the scaled rate."""
    import semiflow.detector.models.semiflow_flowlevel as fl

    rates = []
    real = fl.adam
    monkeypatch.setattr(fl, "adam", lambda p, lr, *a, **k: rates.append(lr) or real(p, lr, *a, **k))
    train([str(store.path)], tmp_path / "m", device="cpu", flow_config="cpu", epochs=1,
          max_flows=None, batch_size=32, lr=2.5e-3, log=lambda *a: None)
    assert rates and set(rates) == {2.5e-3}
    with pytest.raises(ValueError, match="learning rate"):
        FitOptions(lr=0.0)
    with pytest.raises(ValueError, match="--lr apply to the flow level"):
        train([str(store.path)], tmp_path / "p", level="packet", lr=1e-3)
    r = subprocess.run([sys.executable, "-m", "semiflow", "train", str(store.path), "-o",
                        str(tmp_path / "z"), "--lr", "0"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and r.stderr.strip() == "semiflow train: error: --lr must be > 0"


def test_ddp_flag_outside_torchrun_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    r = subprocess.run([sys.executable, "-m", "semiflow", "train", str(tmp_path), "-o",
                        str(tmp_path / "m"), "--ddp"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "torchrun" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("store") / "s"
    build_store(flows(40), 100, 4, d)
    return FlowStore.open(d)


def test_shards_read_every_flow_once_in_a_seeded_order(store):
    n = len(store.flows)
    rows = np.arange(n)
    src = ShardedFlows([store], np.zeros(n, np.int64), rows, 4, 128, shard_flows=16)
    whole = flow_matrix([store], np.zeros(n, np.int64), rows, 4, 128)
    got = torch.cat(list(src.chunks(7))).numpy()
    order = np.random.default_rng(7).permutation(n)
    np.testing.assert_array_equal(got, whole[order])
    parts = [torch.cat(list(src.chunks(7, r, 2))).numpy() for r in (0, 1)]
    np.testing.assert_array_equal(parts[0], whole[order[0::2]])
    np.testing.assert_array_equal(parts[1], whole[order[1::2]])
    np.testing.assert_array_equal(torch.cat(list(src.passes())).numpy(), whole)
    keys = sum(src.service_counts().values())
    assert keys == n


def test_fit_on_a_streamed_set(store):
    n = len(store.flows)
    src = ShardedFlows([store], np.zeros(n, np.int64), np.arange(n), 4, 128, shard_flows=24)
    det = FlowSemiFlowDetector(TINY, device="cpu", random_state=0).fit(
        src, flows(32, 1), options=FitOptions(batch_size=16))
    assert sum(h["flows"] for h in det.history_ if h["stage"] == "flow") == 2 * n
    assert np.isfinite(det.anomaly_score(flows(8, 3))).all()


def test_large_batch_rate_and_schedule():
    assert scaled_lr(1e-3, 1024, 64) == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 256, 64, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 256, 64) == pytest.approx(2e-3)
    # the rate stops growing at MAX_LR_FACTOR x the base rate (batch 1024 with sqrt scaling)
    assert scaled_lr(1e-3, 8192, 64) == scaled_lr(1e-3, 1024, 64) == MAX_LR_FACTOR * 1e-3
    assert scaled_lr(1e-3, 1024, 64, "linear") == pytest.approx(MAX_LR_FACTOR * 1e-3)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], 1.0)
    assert lr_schedule(opt, 1.0, 100, 0.05, large=False) is None  # the method's constant rate
    sched = lr_schedule(opt, 1.0, 100, 0.1, large=True)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:10]))
    # a capturable optimizer's rate is a tensor: written in place, the same values
    t_opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], torch.tensor(1.0))
    rate = t_opt.param_groups[0]["lr"]
    t_sched = lr_schedule(t_opt, 1.0, 100, 0.1, large=True)
    seen = []
    for _ in range(100):
        seen.append(float(rate))
        t_sched.step()
    assert t_opt.param_groups[0]["lr"] is rate
    assert seen == pytest.approx(rates)


def test_gpu_scorer_batch_shapes():
    assert [bucket(m, 16384) for m in (1, 64, 65, 1000, 16384, 20000)] == [
        64, 64, 128, 1024, 16384, 16384]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the "
                    "device machine: docs/scale.md)")
@pytest.mark.parametrize("batch", [16, 48])
def test_cuda_graph_steps_train_as_eager(batch):
    """A step replayed as a CUDA graph trains the same model as the eager step: same epochs,
    losses within float noise (kernels may differ in order), an odd last batch (250 train
    flows: 250 % 16 and 250 % 48 are not 0) run eagerly between replays."""
    runs = {}
    for graphs in (False, True):
        det = FlowSemiFlowDetector(TINY, device="cuda", random_state=0).fit(
            flows(250), flows(64, 1), options=FitOptions(batch_size=batch, amp="off",
                                                         cuda_graphs=graphs))
        runs[graphs] = (det.history_, det.anomaly_score(flows(32, 2)))
    (h0, s0), (h1, s1) = runs[False], runs[True]
    assert [(h["stage"], h["epoch"], h["flows"]) for h in h0] == \
        [(h["stage"], h["epoch"], h["flows"]) for h in h1]
    for a, b in zip(h0, h1):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3, abs=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3, abs=1e-4)
    assert np.corrcoef(s0, s1)[0, 1] > 0.999


def test_amp_auto_is_fp32_at_the_flow_level():
    """Measured on one H200: the flow level ran faster in fp32 than bf16 at batches 64 to 8192
    (docs/scale.md); the packet level keeps bf16; an explicit choice wins."""
    from semiflow.training.train import resolve_amp

    assert resolve_amp("auto", "flow") == "off"
    assert resolve_amp("auto", "packet") == "bf16"
    assert resolve_amp("bf16", "flow") == "bf16"
