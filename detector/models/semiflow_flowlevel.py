"""FlowSemiFlowDetector: SemiFlow on whole flows (the first K packets together).

The method's three stages, on flow samples uint8[n_flows, K, L] of NORMAL traffic only:
(1) an autoencoder (shared per-packet byte encoder + an MLP over the K packets and their
    metadata) learns a flow latent by reconstruction of bytes and metadata;
(2) the method's invertible Flow maps the standardised latent to N(0, I) (NLL training);
(3) a classifier separates normal latents from pseudo-anomalies F^-1(F(e) + eps).
Scores (higher = more anomalous), chosen by `score`:
  "nll"        the flow's negative log-likelihood per latent dimension (encoder + flow);
  "rec"        the autoencoder's reconstruction error of the flow;
  "nll+rec"    both, each standardised on held-out normal flows, summed (the default:
               density catches odd combinations, reconstruction what the latent cannot hold);
  "classifier" the method's classifier log-odds on the flow latent.
Every stage early-stops on held-out normal flows (no labelled anomaly needed). Measured
against packet-level SemiFlow and a kNN baseline in benchmarks/semiflow_lab_ablation.py.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from semiflow.detector.models.semiflow_flownet import (
    FlowDecoder,
    FlowEncoder,
    FlowNetConfig,
    LatentClassifier,
    LatentFlow,
    flow_inputs,
    learn_services,
    learn_services_from_counts,
    log_uniform,
    set_norm_group,
)
from semiflow.detector.models.semiflow_inference import resolve_device
from semiflow.detector.models.train_loop import (
    DistContext,
    FitOptions,
    GraphedStep,
    InMemoryFlows,
    adam,
    autocast,
    batches,
    deterministic_kernels,
    lr_schedule,
    scaled_lr,
    seed_for,
    steps_per_epoch,
    world_size_caveat,
)

FLOW_SCORES = ("nll+rec", "nll", "rec", "classifier")
STAGES = ("reconstruction", "flow", "classifier")


def check_flows(X, cfg: FlowNetConfig, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[1] != cfg.k or X.dtype != np.uint8:
        raise ValueError(f"{what}: expected flow samples uint8[n, {cfg.k}, L], got "
                         f"{X.dtype}{list(X.shape)}")
    if len(X) == 0:
        raise ValueError(f"{what}: no flows")
    return X


class _AutoEncoder(torch.nn.Module):
    """Encoder and decoder as one module: what stage 1 trains (and DDP wraps)."""

    def __init__(self, encoder: FlowEncoder, decoder: FlowDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, rows, meta, svc):
        return self.decoder(self.encoder(rows, meta, svc))


class FlowSemiFlowDetector:
    """Flow-level SemiFlow (normal-only training); fit/anomaly_score on flow samples."""

    level = "flow"

    def __init__(self, config: FlowNetConfig | None = None, score: str = "nll+rec",
                 epochs: int | None = None, device: str | None = None,
                 random_state: int | None = None, log: Callable[[str], None] | None = None):
        self.config = config
        self.score = score
        self.epochs = epochs
        self.device = device
        self.random_state = random_state
        self.log = log

    def _cfg(self, k: int) -> FlowNetConfig:
        cfg = self.config or FlowNetConfig(k=k)
        over = {"k": k}
        if self.random_state is not None:
            over["seed"] = int(self.random_state)
        if self.epochs is not None:
            over["epochs"] = (int(self.epochs),) * 3
        return FlowNetConfig.from_dict({**cfg.to_dict(), **over})

    def _gen(self, *salt: int) -> torch.Generator:
        return torch.Generator(device=self.device_).manual_seed(
            seed_for(self.config_.seed, *salt))

    def _modules(self) -> dict:
        mods = {"encoder": self.encoder_, "decoder": self.decoder_, "flow": self.flow_,
                "classifier": self.classifier_}
        return {k: m for k, m in mods.items() if m is not None}

    # ---- fit ----------------------------------------------------------------------------
    def fit(self, X, X_val: np.ndarray | None = None, y=None, options: FitOptions | None = None,
            dist: DistContext | None = None):
        """X: NORMAL flow samples uint8[n, K, L], or a source of them (training/flow_shards.py:
        data larger than memory, read in shards); X_val (normal) drives early stopping.
        options: batch size, autocast, compile (FitOptions); dist: this process's rank in a
        DistributedDataParallel job (every rank gets the same result)."""
        with deterministic_kernels(), warnings.catch_warnings():
            # DDP with CUDA graphs: DDP is built on the warm-up stream and PyTorch captures on
            # its own side stream, as its recipe does; autograd notes the change of stream
            # (it synchronises them). Measured: ranks agree to the bit, graphs train as eager.
            warnings.filterwarnings("ignore", ".*AccumulateGrad node's stream does not match",
                                    UserWarning)
            return self._fit(X, X_val, options, dist)

    def _fit(self, X, X_val, options: FitOptions | None, dist: DistContext | None):
        if self.score not in FLOW_SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose from {FLOW_SCORES}")
        opts, dist = options or FitOptions(), dist or DistContext()
        streamed = hasattr(X, "chunks")
        if not streamed:
            X = np.asarray(X)
        self.config_ = cfg = self._cfg(X.k if streamed else (X.shape[1] if X.ndim == 3 else 0))
        if not streamed:
            X = check_flows(X, cfg, "fit")
        self.device_ = dev = resolve_device(dist.device(self.device))
        if X_val is None:
            if streamed:
                raise ValueError("fit: a streamed training set needs X_val")
            idx = np.random.default_rng(cfg.seed).permutation(len(X))
            n_val = max(1, len(X) // 10) if len(X) > 1 else 0
            X_val, X = (X[idx[:n_val]], X[idx[n_val:]]) if n_val else (X, X)
        X_val = check_flows(X_val, cfg, "fit X_val")
        if cfg.max_services > 0 and not cfg.services:
            services = (learn_services_from_counts(X.service_counts(), cfg) if streamed
                        else learn_services(X, cfg))
            self.config_ = cfg = FlowNetConfig.from_dict({**cfg.to_dict(), "services": services})
        torch.manual_seed(cfg.seed)
        self.encoder_, self.decoder_ = FlowEncoder(cfg).to(dev), FlowDecoder(cfg).to(dev)
        self.flow_, self.classifier_ = LatentFlow(cfg).to(dev), LatentClassifier(cfg).to(dev)
        for m in (self.encoder_, self.decoder_):      # (they normalise K rows per flow)
            set_norm_group(m, opts.norm_group * cfg.k)
        self.history_: list[dict] = []
        train = X if streamed else InMemoryFlows(
            torch.from_numpy(np.ascontiguousarray(X[..., : cfg.length])).to(dev))
        Xv = torch.from_numpy(np.ascontiguousarray(X_val[..., : cfg.length])).to(dev)
        batch = opts.batch_size or cfg.batch_size
        per_rank = max(2, batch // dist.world)
        caveat = world_size_caveat(batch, dist.world, opts.norm_group)
        if caveat and self.log and dist.rank == 0:
            self.log(f"note: {caveat}")
        large = batch > cfg.batch_size
        lr = opts.lr or (scaled_lr(cfg.lr, batch, cfg.batch_size, opts.lr_scaling) if large
                         else cfg.lr)
        trained = (_AutoEncoder(self.encoder_, self.decoder_), self.flow_, self.classifier_)
        for stage in range(3):
            if stage == 1:
                self._standardise(train)
            if stage == 2 and self.score != "classifier":
                break                              # no classifier needed for this score
            # reconstruction and flow: one CUDA graph a step, DDP's all-reduce captured in it
            # (the classifier's stage draws random noise from its own generator: eager)
            graphed = (opts.cuda_graphs and dev.type == "cuda" and not opts.compile
                       and stage < 2)
            side = torch.cuda.Stream(dev) if graphed else None
            model = dist.wrap(trained[stage], side)
            if opts.compile:
                model = torch.compile(model)
            opt = adam(trained[stage].parameters(), lr, dev, capturable=graphed)
            n_steps = steps_per_epoch(len(train), per_rank, dist.world)
            sched = lr_schedule(opt, lr, n_steps * cfg.epochs[stage], opts.warmup, large)
            amp = opts.amp if stage != 1 else "off"   # the flow trains in fp32
            step = self._step_fn(stage, model, opt, amp, cache=not graphed)
            if graphed:
                step = GraphedStep(step, opt.zero_grad, GraphedStep.warmup_steps(dist.active),
                                   side)
            best, bad, best_state = math.inf, 0, None
            for epoch in range(cfg.epochs[stage]):
                if bad >= cfg.patience:
                    break
                self._train_mode(stage)
                gen = self._gen(stage, epoch, dist.rank)
                total = torch.zeros(2, dtype=torch.float64, device=dev)
                started = time.perf_counter()
                for chunk in train.chunks(seed_for(cfg.seed, stage, epoch), dist.rank,
                                          dist.world, dev, per_rank):
                    for xb in batches(chunk.to(dev, non_blocking=True), per_rank):
                        if graphed:
                            loss = step(xb)
                        else:
                            opt.zero_grad(set_to_none=True)
                            loss = step(xb, gen)
                        if sched is not None:
                            sched.step()
                        total[0] += loss.double() * len(xb)
                        total[1] += len(xb)
                total = dist.all_sum(total).tolist()      # (the epoch's only host sync)
                dist.sync_buffers(trained[stage])
                seconds = time.perf_counter() - started
                val = self._val_loss(stage, Xv)
                rec = {"stage": STAGES[stage], "epoch": epoch + 1,
                       "train_loss": total[0] / max(total[1], 1), "val_loss": val,
                       "flows": int(total[1]), "seconds": round(seconds, 4)}
                self.history_.append(rec)
                if self.log and dist.rank == 0:
                    self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in rec.items()))
                if val < best - 1e-6:
                    best, bad, best_state = val, 0, self._state(stage)
                else:
                    bad += 1
            if best_state is not None:
                for name, sd in best_state.items():
                    self._modules()[name].load_state_dict(sd)
        if self.score != "classifier":
            self.classifier_ = None            # never trained: not offered as a score
        for m in self._modules().values():
            m.eval()
        self._calibrate(Xv)
        return self

    def _step_fn(self, stage: int, model, opt, amp: str, cache: bool):
        """One optimisation step of a stage on a batch (gradients zeroed by the caller):
        loss, backward, clipping (the flow), optimizer; returns the detached loss."""
        loss_fn = (self._loss_rec, self._loss_flow, self._loss_cls)[stage]
        flow_params = list(self.flow_.parameters())

        def step(xb: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
            with autocast(self.device_, amp, cache):
                loss = loss_fn(xb, gen, model)
            loss.backward()
            if stage == 1:
                torch.nn.utils.clip_grad_norm_(flow_params, 10.0)
            opt.step()
            return loss.detach()

        return step

    def _train_mode(self, stage: int) -> None:
        for name, m in self._modules().items():
            m.train(name == ("encoder", "flow", "classifier")[stage]
                    or (stage == 0 and name == "decoder"))

    def _state(self, stage: int) -> dict:
        names = (("encoder", "decoder"), ("flow",), ("classifier",))[stage]
        return {n: {k: t.detach().clone() for k, t in self._modules()[n].state_dict().items()}
                for n in names}

    def _inputs(self, xb: torch.Tensor):
        return flow_inputs(xb, self.config_, self.device_)

    def _rec_error(self, rows, meta, svc, out) -> torch.Tensor:
        """Per flow: byte MSE + w_meta * metadata MSE + w_service * service cross-entropy."""
        r_hat, m_hat, s_logits = out
        cfg = self.config_
        return (cfg.w_bytes * ((r_hat - rows) ** 2).mean((1, 2))
                + cfg.w_meta * ((m_hat - meta) ** 2).mean((1, 2))
                + cfg.w_service * F.cross_entropy(s_logits, svc, reduction="none"))

    def _loss_rec(self, xb: torch.Tensor, gen=None, model=None) -> torch.Tensor:
        rows, meta, svc = self._inputs(xb)
        ae = model if model is not None else _AutoEncoder(self.encoder_, self.decoder_)
        out = ae(rows, meta, svc)
        return self._rec_error(rows, meta, svc, tuple(o.float() for o in out)).mean()

    @torch.no_grad()
    def _latent(self, xb: torch.Tensor) -> torch.Tensor:
        return self.encoder_(*self._inputs(xb))

    def _loss_flow(self, xb: torch.Tensor, gen=None, model=None) -> torch.Tensor:
        flow = model if model is not None else self.flow_
        z, logdet = flow(self.flow_.standardise(self._latent(xb).float()))
        return LatentFlow.nll(z, logdet)

    @torch.no_grad()
    def pseudo_anomalies(self, u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Standardised latents u -> F^-1(F(u) + sigma * eps), sigma log-uniform per sample."""
        cfg = self.config_
        z, _ = self.flow_(u)
        sig = log_uniform(len(z), cfg.noise_sigma, cfg.noise_sigma_max, gen, self.device_)
        eps = torch.randn(z.shape, generator=gen, device=z.device)
        fake = self.flow_.inverse(z + sig * eps)
        return torch.nan_to_num(fake, nan=0.0, posinf=1e4, neginf=-1e4).clamp(-1e4, 1e4)

    def _cls_batch(self, xb: torch.Tensor, gen: torch.Generator):
        u = self.flow_.standardise(self._latent(xb).float())
        n_fake = max(1, int(round(len(u) * self.config_.pseudo_ratio)))
        self.flow_.eval()
        fake = self.pseudo_anomalies(u[:n_fake], gen)
        y = torch.cat([torch.zeros(len(u)), torch.ones(len(fake))]).long().to(u.device)
        return torch.cat([u, fake]), y

    def _loss_cls(self, xb: torch.Tensor, gen: torch.Generator, model=None) -> torch.Tensor:
        inputs, y = self._cls_batch(xb, gen)
        net = model if model is not None else self.classifier_
        return F.cross_entropy(net(inputs).float(), y)

    @torch.no_grad()
    def _standardise(self, train) -> None:
        """Mean and std of the training latents, in one pass (float64 sums: exact enough
        for any number of flows, and the same on every rank)."""
        self.encoder_.eval()
        d = self.config_.latent_dim
        s1 = torch.zeros(d, dtype=torch.float64, device=self.device_)
        s2, n = torch.zeros_like(s1), 0
        for chunk in train.passes(self.device_):
            chunk = chunk.to(self.device_, non_blocking=True)
            for i in range(0, len(chunk), 8192):
                e = self._latent(chunk[i:i + 8192]).double()
                s1 += e.sum(0)
                s2 += (e * e).sum(0)
                n += len(e)
        mean = s1 / n
        var = (s2 - n * mean * mean) / max(n - 1, 1)
        self.flow_.mean.copy_(mean.float())
        self.flow_.std.copy_(var.clamp_min(0).sqrt().float().clamp_min(1e-4))

    @torch.no_grad()
    def _val_loss(self, stage: int, Xv: torch.Tensor) -> float:
        for m in self._modules().values():
            m.eval()
        fn = (self._loss_rec, self._loss_flow, self._loss_cls)[stage]
        gen = self._gen(2, 10_000)
        total = sum(float(fn(Xv[i:i + 1024], gen)) * len(Xv[i:i + 1024])
                    for i in range(0, len(Xv), 1024))
        return total / len(Xv)

    @torch.no_grad()
    def _calibrate(self, Xv: torch.Tensor) -> None:
        """Location/scale of nll and rec on held-out normal flows (for "nll+rec")."""
        parts = self._parts(Xv.cpu().numpy())
        parts.pop("classifier", None)
        self.stats_ = {k: (float(np.median(v)), float(max(np.subtract(*np.percentile(
            v, [75, 25])), 1e-9))) for k, v in parts.items()}

    # ---- inference ----------------------------------------------------------------------
    def use_gpu_scorer(self, batch_size: int | None = None, amp: str = "bf16",
                       compile: bool = False) -> None:
        """Score through detector/models/flow_inference.py (large batches, overlapped copies, amp)
        instead of the plain path; CUDA only, nll and rec scores only. batch_size None:
        flow_inference.GPU_BATCH."""
        from semiflow.detector.models.flow_inference import GPU_BATCH, GpuFlowScorer

        self.gpu_scorer_ = GpuFlowScorer(self, batch_size or GPU_BATCH, amp, compile)

    @torch.no_grad()
    def latent_nll_rec(self, X, amp: str = "off"
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flow samples (array or tensor) -> (latent, NLL per dimension, reconstruction
        error), float64 scores; `amp` autocasts the byte encoder/decoder on CUDA (the flow's
        NLL stays fp32). The one computation behind both scoring paths."""
        rows, meta, svc = flow_inputs(X, self.config_, self.device_)
        with autocast(self.device_, amp):
            e = self.encoder_(rows, meta, svc)
            out = self.decoder_(e)
        e = e.float()
        rec = self._rec_error(rows, meta, svc, tuple(o.float() for o in out))
        return e, self.flow_.nll_per_flow(e), rec.double()

    @torch.no_grad()
    def _parts(self, X: np.ndarray, batch_size: int = 2048) -> dict[str, np.ndarray]:
        fast = getattr(self, "gpu_scorer_", None)
        if fast is not None and self.classifier_ is None:
            return fast.parts(X)
        out: dict[str, list] = {"nll": [], "rec": [], "classifier": []}
        for i in range(0, len(X), batch_size):
            e, nll, rec = self.latent_nll_rec(X[i:i + batch_size, :, : self.config_.length])
            out["rec"].append(rec.cpu().numpy())
            out["nll"].append(nll.cpu().numpy())
            if self.classifier_ is not None:     # artifacts do not store it
                logits = self.classifier_(self.flow_.standardise(e)).double()
                out["classifier"].append((logits[:, 1] - logits[:, 0]).cpu().numpy())
        return {k: np.concatenate(v) for k, v in out.items() if v}

    def score_parts(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Every score of every flow (for ablations): nll, rec, classifier, nll+rec."""
        if not hasattr(self, "stats_"):
            raise ValueError("FlowSemiFlowDetector is not fitted yet: call fit() first")
        X = check_flows(X, self.config_, "anomaly_score")
        parts = self._parts(X)
        parts["nll+rec"] = sum((parts[k] - m) / s for k, (m, s) in self.stats_.items()
                               if k in ("nll", "rec"))
        return parts

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """float64[n_flows], higher = more anomalous (the configured score)."""
        return self.score_parts(X)[self.score]

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return -self.anomaly_score(X)
