"""SemiFlowDetector: the scikit-learn-style estimator over packet rows uint8[n, L].

fit() runs the method's three stages on NORMAL rows only: (1) adversarial reconstruction
(encoder/decoder/discriminator), (2) a normalizing flow on the frozen encoder's latents,
(3) a classifier of normal latents vs pseudo-anomalies made by noising z = F(e) and running
F backwards. anomaly_score() = the classifier's log-odds of "anomalous" (higher = more
anomalous; P(anomalous) = sigmoid of it, see anomaly_probability()); score_samples() =
-anomaly_score() as scikit-learn expects (higher = more normal).
Every stage early-stops on validation data that needs no labelled anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semiflow.detector.models.semiflow_inference import (  # noqa: F401 - packet_scores, resolve_device re-exported
    as_float,
    flow_nll_scores,
    packet_scores,
    probability,
    resolve_device,
)
from semiflow.detector.models.semiflow_inference import auroc as _auroc
from semiflow.detector.models.semiflow_inference import check_rows as _check_rows
from semiflow.detector.models.semiflow_model import (
    Classifier,
    Decoder,
    Discriminator,
    Encoder,
    Flow,
    SemiFlowConfig,
)
from semiflow.detector.models.train_loop import autocast, seed_for

STAGES = ("reconstruction", "flow", "classifier")
# What anomaly_score returns: the method's classifier log-odds, or the flow's NLL per
# dimension (measured better on the corpus benchmarks: docs/model.md).
SCORES = ("classifier", "flow-nll")
_VAL_ROWS = 4096


class SemiFlowDetector:
    """Semi-supervised packet anomaly detector (normal-only training, pseudo-anomalies).

    config: SemiFlowConfig or "small" / "paper". epochs: int overriding every stage's
    maximum. amp: "bf16", "fp16" or "off" (CUDA only; the flow always runs in fp32).
    checkpoint: a file written after every epoch; resume=True continues from it.
    score: "classifier" (the method: encoder + classifier log-odds) or "flow-nll" (encoder +
    flow density; all three stages are trained either way).
    """

    def __init__(self, config: SemiFlowConfig | str = "small", epochs: int | None = None,
                 device: str | None = None, amp: str = "bf16", random_state: int | None = None,
                 checkpoint: str | Path | None = None, resume: bool = False,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 score: str = "classifier"):
        self.config = config
        self.epochs = epochs
        self.device = device
        self.amp = amp
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.resume = resume
        self.progress = progress
        self.log = log
        self.score = score

    # ---- set-up -------------------------------------------------------------------------
    def _cfg(self) -> SemiFlowConfig:
        cfg = SemiFlowConfig.named(self.config) if isinstance(self.config, str) else self.config
        over = {}
        if self.random_state is not None:
            over["seed"] = int(self.random_state)
        if self.epochs is not None:
            over["epochs"] = (int(self.epochs),) * 3
        return SemiFlowConfig.from_dict({**cfg.to_dict(), **over}) if over else cfg

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def _autocast(self):
        return autocast(self.device_, self.amp)

    def _gen(self, *salt: int) -> torch.Generator:
        return torch.Generator(device=self.device_).manual_seed(
            seed_for(self.config_.seed, *salt))

    def _build(self) -> None:
        cfg = self.config_
        torch.manual_seed(cfg.seed)
        dev = self.device_
        self.encoder_ = Encoder(cfg).to(dev)
        self.decoder_ = Decoder(cfg).to(dev)
        self.discriminator_ = Discriminator(cfg).to(dev)
        self.flow_ = Flow(cfg).to(dev)
        self.classifier_ = Classifier(cfg).to(dev)
        betas = (cfg.beta1, 0.999)
        self.opts_ = {
            "g": torch.optim.Adam(list(self.encoder_.parameters()) +
                                  list(self.decoder_.parameters()), cfg.lr, betas=betas),
            "d": torch.optim.Adam(self.discriminator_.parameters(), cfg.lr, betas=betas),
            "flow": torch.optim.Adam(self.flow_.parameters(), cfg.lr, betas=betas),
            "cls": torch.optim.Adam(self.classifier_.parameters(), cfg.lr, betas=betas),
        }
        self.scaler_ = torch.amp.GradScaler(
            "cuda", enabled=dev.type == "cuda" and self.amp == "fp16")

    def _modules(self) -> dict:
        return {"encoder": self.encoder_, "decoder": self.decoder_,
                "discriminator": self.discriminator_, "flow": self.flow_,
                "classifier": self.classifier_}

    # ---- checkpointing ------------------------------------------------------------------
    def _save_checkpoint(self, state: dict) -> None:
        if not self.checkpoint:
            return
        path = Path(self.checkpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"config": self.config_.to_dict(), "state": state,
                "modules": {k: m.state_dict() for k, m in self._modules().items()},
                "opts": {k: o.state_dict() for k, o in self.opts_.items()},
                "history": self.history_}
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)

    def _load_checkpoint(self) -> dict | None:
        path = Path(self.checkpoint) if self.checkpoint else None
        if not (self.resume and path and path.exists()):
            return None
        try:
            blob = torch.load(path, map_location=self.device_, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the user's problem
            raise ValueError(f"cannot resume: checkpoint {path} is unreadable ({e})") from e
        if blob.get("config") != self.config_.to_dict():
            raise ValueError(f"cannot resume: checkpoint {path} was made with another config")
        for k, m in self._modules().items():
            m.load_state_dict(blob["modules"][k])
        for k, o in self.opts_.items():
            o.load_state_dict(blob["opts"][k])
        self.history_ = list(blob["history"])
        self._say(f"resumed from {path}: stage {blob['state']['stage'] + 1}, "
                  f"epoch {blob['state']['epoch'] + 1} done")
        return blob["state"]

    # ---- fit ----------------------------------------------------------------------------
    def fit(self, X: np.ndarray, X_val: np.ndarray | None = None, y=None) -> SemiFlowDetector:
        """Train on NORMAL packet rows X; X_val (normal too) drives early stopping.

        Without X_val, 10% of the rows are held out at random: callers that know capture
        files should pass a file-level split instead (training.train does).
        """
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose from {', '.join(SCORES)}")
        self.config_ = cfg = self._cfg()
        self.device_ = resolve_device(self.device)
        X = _check_rows(X, cfg.length, "fit")
        if X_val is None:
            rng = np.random.default_rng(cfg.seed)
            idx = rng.permutation(len(X))
            n_val = max(1, len(X) // 10) if len(X) > 1 else 0
            X_val, X = (X[idx[:n_val]], X[idx[n_val:]]) if n_val else (X, X)
        X_val = _check_rows(X_val, cfg.length, "fit X_val")
        if len(X_val) > _VAL_ROWS:
            X_val = X_val[np.random.default_rng(cfg.seed).choice(len(X_val), _VAL_ROWS, False)]
        self._build()
        self.history_: list[dict] = []
        state = self._load_checkpoint() or {"stage": 0, "epoch": -1, "best": math.inf,
                                            "bad": 0, "best_states": None}
        Xt = torch.from_numpy(np.ascontiguousarray(X)).to(self.device_)
        Xv = torch.from_numpy(np.ascontiguousarray(X_val)).to(self.device_)
        steps = (self._epoch_reconstruction, self._epoch_flow, self._epoch_classifier)
        for stage in range(state["stage"], 3):
            for epoch in range(state["epoch"] + 1, cfg.epochs[stage]):
                if state["bad"] >= cfg.patience:
                    break
                train_loss = steps[stage](Xt, epoch)
                val = self._validate(stage, Xv)
                rec = {"stage": STAGES[stage], "epoch": epoch + 1, "train_loss": train_loss,
                       **val}
                self.history_.append(rec)
                self._say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in rec.items()))
                if val["val_loss"] < state["best"] - 1e-6:
                    state.update(best=val["val_loss"], bad=0,
                                 best_states=self._stage_states(stage))
                else:
                    state["bad"] += 1
                state["epoch"] = epoch
                self._save_checkpoint(state)
            if state["best_states"] is not None:  # early stopping keeps the best epoch
                for k, sd in state["best_states"].items():
                    self._modules()[k].load_state_dict(sd)
            state = {"stage": stage + 1, "epoch": -1, "best": math.inf, "bad": 0,
                     "best_states": None}
            self._save_checkpoint(state)
        for m in self._modules().values():
            m.eval()
        return self

    def _stage_states(self, stage: int) -> dict:
        names = (["encoder", "decoder", "discriminator"], ["flow"], ["classifier"])[stage]
        return {k: {n: t.detach().clone() for n, t in self._modules()[k].state_dict().items()}
                for k in names}

    def _batches(self, Xt: torch.Tensor, stage: int, epoch: int, desc: str):
        n, bs = len(Xt), self.config_.batch_size
        order = torch.randperm(n, generator=self._gen(stage, epoch, 0), device=self.device_)
        chunks = [order[i:i + bs] for i in range(0, n, bs) if len(order[i:i + bs]) > 1]
        if self.progress:
            from tqdm import tqdm
            chunks = tqdm(chunks, desc=f"{desc} {epoch + 1}", leave=False)
        return chunks

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler_.scale(loss).backward()
        self.scaler_.step(opt)
        self.scaler_.update()

    def _epoch_reconstruction(self, Xt: torch.Tensor, epoch: int) -> float:
        cfg = self.config_
        enc, dec, disc = self.encoder_, self.decoder_, self.discriminator_
        for m in (enc, dec, disc):
            m.train()
        total, count = 0.0, 0
        bar = self._batches(Xt, 0, epoch, "stage 1 G/D")
        for idx in bar:
            x = as_float(Xt[idx])
            with self._autocast():
                fake = dec(enc(x))
                d_real, d_fake = disc(x), disc(fake)
                g_loss = (cfg.w_rec * F.mse_loss(fake.float(), x) + cfg.w_adv *
                          F.mse_loss(torch.sigmoid(d_fake.float()),
                                     torch.sigmoid(d_real.float()).detach()))
            self._step(self.opts_["g"], g_loss)
            with self._autocast():
                d_real, d_fake = disc(x).float(), disc(fake.detach()).float()
                d_loss = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                                + F.binary_cross_entropy_with_logits(d_fake,
                                                                     torch.zeros_like(d_fake)))
            self._step(self.opts_["d"], d_loss)
            total += float(g_loss.detach()) * len(idx)
            count += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(g=f"{float(g_loss.detach()):.4f}",
                                d=f"{float(d_loss.detach()):.3f}")
        return total / max(count, 1)

    def _latent(self, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            return self.encoder_(as_float(xb)).float()

    def _epoch_flow(self, Xt: torch.Tensor, epoch: int) -> float:
        self.encoder_.eval()
        self.flow_.train()
        total, count = 0.0, 0
        bar = self._batches(Xt, 1, epoch, "stage 2 flow")
        for idx in bar:
            e = self._latent(Xt[idx]).flatten(1)
            z, logdet = self.flow_(e)
            loss = Flow.nll(z, logdet)
            opt = self.opts_["flow"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.flow_.parameters(), 10.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(nll=f"{float(loss.detach()):.4f}")
        return total / max(count, 1)

    @torch.no_grad()
    def pseudo_anomalies(self, e: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Latents e[B, C, T] -> pseudo-anomalous latents F^-1(F(e) + eps), eps ~ N(mu, sd^2)."""
        cfg = self.config_
        self.flow_.eval()
        z, _ = self.flow_(e.flatten(1).float())
        eps = torch.randn(z.shape, generator=generator, device=z.device)
        fake = self.flow_.inverse(z + cfg.noise_mu + self._noise_scales(len(z), generator) * eps)
        fake = torch.nan_to_num(fake, nan=0.0, posinf=1e4, neginf=-1e4).clamp(-1e4, 1e4)
        return fake.view_as(e)

    def _noise_scales(self, n: int, generator: torch.Generator) -> torch.Tensor | float:
        """sigma per pseudo-anomaly: fixed, or log-uniform in [noise_sigma, noise_sigma_max]
        so the classifier also sees pseudo-anomalies close to the normal shell (graded
        scores instead of a far, saturated boundary)."""
        cfg = self.config_
        if cfg.noise_sigma_max <= cfg.noise_sigma:
            return cfg.noise_sigma
        u = torch.rand((n, 1), generator=generator, device=self.device_)
        lo, hi = math.log(cfg.noise_sigma), math.log(cfg.noise_sigma_max)
        return torch.exp(lo + (hi - lo) * u)

    def _classifier_batch(self, e: torch.Tensor, gen: torch.Generator):
        n_fake = max(1, int(round(len(e) * self.config_.pseudo_ratio)))
        fake = self.pseudo_anomalies(e[:n_fake], gen)   # default 2:1 normal:pseudo
        inputs = torch.cat([e, fake])
        target = torch.cat([torch.zeros(len(e), dtype=torch.long, device=e.device),
                            torch.ones(len(fake), dtype=torch.long, device=e.device)])
        return inputs, target

    def _epoch_classifier(self, Xt: torch.Tensor, epoch: int) -> float:
        self.encoder_.eval()
        self.classifier_.train()
        gen = self._gen(2, epoch, 1)
        total, count = 0.0, 0
        bar = self._batches(Xt, 2, epoch, "stage 3 classifier")
        for idx in bar:
            inputs, target = self._classifier_batch(self._latent(Xt[idx]), gen)
            with self._autocast():
                loss = F.cross_entropy(self.classifier_(inputs).float(), target)
            self._step(self.opts_["cls"], loss)
            total += float(loss.detach()) * len(idx)
            count += len(idx)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(ce=f"{float(loss.detach()):.4f}")
        return total / max(count, 1)

    @torch.no_grad()
    def _validate(self, stage: int, Xv: torch.Tensor) -> dict:
        for m in self._modules().values():
            m.eval()
        bs = 1024
        if stage == 0:
            err = sum(float(F.mse_loss(self.decoder_(self.encoder_(as_float(Xv[i:i + bs]))),
                                       as_float(Xv[i:i + bs]), reduction="sum"))
                      for i in range(0, len(Xv), bs))
            return {"val_loss": err / Xv.numel()}
        if stage == 1:
            nll = [float(Flow.nll(*self.flow_(self._latent(Xv[i:i + bs]).flatten(1))))
                   * len(Xv[i:i + bs]) for i in range(0, len(Xv), bs)]
            return {"val_loss": sum(nll) / len(Xv)}
        gen = self._gen(2, 10_000, 2)   # the same noise every epoch: comparable criterion
        losses, scores, labels = [], [], []
        for i in range(0, len(Xv), bs):
            e = self._latent(Xv[i:i + bs])
            fake = self.pseudo_anomalies(e, gen)
            inputs = torch.cat([e, fake])
            target = torch.cat([torch.zeros(len(e)), torch.ones(len(fake))]).long().to(e.device)
            logits = self.classifier_(inputs).float()
            losses.append(float(F.cross_entropy(logits, target, reduction="sum")))
            scores.append((logits[:, 1] - logits[:, 0]).cpu().numpy())
            labels.append(target.cpu().numpy())
        s, y = np.concatenate(scores), np.concatenate(labels)
        return {"val_loss": sum(losses) / len(s), "val_pseudo_auroc": _auroc(y, s)}

    # ---- inference ----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classifier_"):
            raise ValueError("SemiFlowDetector is not fitted yet: call fit() first")

    def anomaly_score(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Per packet row, float64, higher = more anomalous: the classifier's log-odds of
        "anomalous" (score="classifier") or the flow's NLL per dimension ("flow-nll")."""
        self._check_fitted()
        X = _check_rows(X, self.config_.length, "anomaly_score")
        if self.score == "flow-nll":
            return flow_nll_scores(self.encoder_, self.flow_, X, self.device_, batch_size)
        return packet_scores(self.encoder_, self.classifier_, X, self.device_, batch_size)

    def anomaly_probability(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The classifier's P(anomalous) per packet row, in [0, 1] (saturates: rank with
        the log-odds)."""
        self._check_fitted()
        X = _check_rows(X, self.config_.length, "anomaly_probability")
        return probability(packet_scores(self.encoder_, self.classifier_, X, self.device_,
                                         batch_size))

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn convention: higher = more normal."""
        return -self.anomaly_score(X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Positive = normal (P(anomalous) < 0.5), as scikit-learn's outlier detectors."""
        return -self.anomaly_score(X)

    @torch.no_grad()
    def encode(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Encoder features float32[n, latent_dim] (for density baselines on the same features)."""
        self._check_fitted()
        X = _check_rows(X, self.config_.length, "encode")
        self.encoder_.eval()
        out = [self.encoder_(as_float(torch.from_numpy(X[i:i + batch_size]).to(self.device_)))
               .flatten(1).float().cpu().numpy() for i in range(0, len(X), batch_size)]
        return np.concatenate(out)

    @torch.no_grad()
    def reconstruction_error(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Per-row MSE of stage 1's autoencoder (GANomaly-1d style score; higher = odder)."""
        self._check_fitted()
        X = _check_rows(X, self.config_.length, "reconstruction_error")
        self.encoder_.eval()
        self.decoder_.eval()
        out = []
        for i in range(0, len(X), batch_size):
            x = as_float(torch.from_numpy(X[i:i + batch_size]).to(self.device_))
            out.append(((self.decoder_(self.encoder_(x)) - x) ** 2).mean((1, 2)).cpu().numpy())
        return np.concatenate(out).astype(np.float64)
