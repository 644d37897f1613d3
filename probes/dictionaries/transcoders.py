"""Transcoders per layer (docs/methods.md §7): a wide sparse MLP trained to imitate one MLP layer.

Dunefsky et al. (2024), *Transcoders Find Interpretable LLM Feature Circuits*: the transcoder reads what
the MLP of block ``l-1`` reads (``ln2.hook_normalized``) and is trained to write what it writes
(``hook_mlp_out``), through a sparse layer of latents. SAELens has transcoder classes but no trainer for
them and no TopK transcoder, so the loop here trains SAELens's :class:`~sae_lens.JumpReLUTranscoder`'s
own parameters with BatchTopK (Bussmann et al. 2024: the top ``k x batch`` pre-activations of a batch fire,
k per token on average) plus an AuxK loss for dead latents, and then sets its threshold to the BatchTopK
value on training rows. The saved transcoder is that JumpReLU, so ``sae_lens.SAE.load_from_disk`` loads
it as a ``Transcoder`` whose encode is exactly the one every metric here was computed with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import JumpReLUTranscoder

    from probes.activations.token_cache import TokenCache

TRANSCODER_STREAMS = ("mlp_in", "mlp_out")
_AUX_COEFFICIENT = 1 / 32  # AuxK's weight (Gao et al. 2024)
_THRESHOLD_BATCHES = 8  # training batches whose BatchTopK threshold becomes the saved one


@dataclass(frozen=True)
class TranscoderSettings:
    """What a transcoder is and how it is trained; the schedule fields mean what they mean for the SAEs."""

    expansion: int = 4
    k: int = 32
    training_tokens: int = 131072
    batch_size: int = 512
    lr: float = 4e-3
    lr_warm_up_fraction: float = 0.05
    lr_decay_fraction: float = 0.2
    dead_feature_window: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.expansion < 1 or self.k < 1 or self.batch_size < 1:
            raise ValueError("transcoder expansion, k and batch_size must be >= 1")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens ({self.training_tokens}) must be at least one batch ({self.batch_size})")

    @property
    def steps(self) -> int:
        return self.training_tokens // self.batch_size


def _learning_rate(settings: TranscoderSettings, step: int) -> float:
    """Linear warm-up, constant, then linear decay to a tenth over the last ``lr_decay_fraction`` of steps."""
    steps = settings.steps
    warm, decay = int(settings.lr_warm_up_fraction * steps), int(settings.lr_decay_fraction * steps)
    if step < warm:
        return settings.lr * (step + 1) / warm
    if decay and step >= steps - decay:
        return settings.lr * (1 - 0.9 * (step - (steps - decay) + 1) / decay)
    return settings.lr


def _batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent activations keeping the top ``k x rows`` positive pre-activations of the batch, and the cut."""
    import torch

    positive = pre.relu()
    flat = positive.flatten()
    kept = torch.topk(flat, min(k * len(pre), flat.numel()), sorted=False)
    acts = torch.zeros_like(flat).scatter_(0, kept.indices, kept.values).view_as(pre)
    return acts, kept.values.min()


def train_transcoder(
    cache: TokenCache, layer: int, settings: TranscoderSettings, model_name: str, seed: int = 0
) -> tuple[JumpReLUTranscoder, dict[str, Any]]:
    """Train one transcoder on a cached layer's MLP input and output rows; returns it and training details.

    Inputs and targets are scaled to mean norm sqrt(d) for training (the SAEs' normalisation) and the
    scales are folded into the saved weights, which take and return raw activations.
    """
    import torch
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    streams = cache.meta.get("streams", {})
    if not set(TRANSCODER_STREAMS) <= set(streams):
        raise ValueError(f"{cache.path} holds streams {sorted(streams)}, not the transcoder's {TRANSCODER_STREAMS}")
    d_model = cache.meta["d_model"]
    d_sae = settings.expansion * d_model
    index = cache.layers.index(layer)
    hook_in, hook_out = streams["mlp_in"][index], streams["mlp_out"][index]
    metadata = SAEMetadata(
        model_name=model_name,
        hook_name=hook_in,
        hook_name_out=hook_out,
        context_size=cache.meta["context"],
        prepend_bos=True,
    )
    config = JumpReLUTranscoderConfig(
        d_in=d_model,
        d_sae=d_sae,
        d_out=d_model,
        apply_b_dec_to_input=False,
        device=settings.device,
        metadata=metadata,
    )
    mean_out, norm_out = cache.mean_and_norm(layer, "mlp_out")
    _, norm_in = cache.mean_and_norm(layer, "mlp_in")
    scale_in, scale_out = d_model**0.5 / norm_in, d_model**0.5 / norm_out
    torch.manual_seed(seed)
    transcoder = JumpReLUTranscoder(config)
    device = torch.device(settings.device)
    with torch.no_grad():
        decoder = torch.randn(d_sae, d_model)
        transcoder.W_dec.copy_(decoder / decoder.norm(dim=1, keepdim=True))
        transcoder.W_enc.copy_(transcoder.W_dec.T)
        transcoder.b_enc.zero_()
        transcoder.b_dec.copy_(mean_out * scale_out)
    parameters = [transcoder.W_enc, transcoder.b_enc, transcoder.W_dec, transcoder.b_dec]
    optimiser = torch.optim.Adam(parameters, lr=settings.lr)
    batches = cache.batches(layer, settings.batch_size, seed, streams=TRANSCODER_STREAMS)
    last_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    thresholds, losses = [], []
    for step in range(settings.steps):
        rows = next(batches).to(device)
        x, target = rows[:, :d_model] * scale_in, rows[:, d_model:] * scale_out
        pre = x @ transcoder.W_enc + transcoder.b_enc
        acts, cut = _batch_topk(pre, settings.k)
        error = target - (acts @ transcoder.W_dec + transcoder.b_dec)
        loss = error.square().sum(1).mean()
        fired = (acts > 0).any(0)
        last_fired = torch.where(fired, step, last_fired)
        dead = (step - last_fired) >= settings.dead_feature_window
        if bool(dead.any()):
            # AuxK: the top dead latents' pre-activations try to explain what the live ones leave over
            k_aux = min(d_model // 2, int(dead.sum()))
            masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
            top = masked.topk(k_aux, dim=1)
            aux = torch.zeros_like(pre).scatter_(1, top.indices, top.values.relu())
            aux_error = error.detach() - aux @ transcoder.W_dec
            loss = loss + _AUX_COEFFICIENT * aux_error.square().sum(1).mean()
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(settings, step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            transcoder.W_dec.div_(transcoder.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if step >= settings.steps - _THRESHOLD_BATCHES:
            thresholds.append(float(cut.detach()))
        losses.append(float(loss.detach()))
    with torch.no_grad():
        transcoder.threshold.fill_(sum(thresholds) / len(thresholds))
        transcoder.W_enc.mul_(scale_in)
        transcoder.W_dec.div_(scale_out)
        transcoder.b_dec.div_(scale_out)
    transcoder.eval()
    details = {
        "steps": settings.steps,
        "training_tokens": settings.steps * settings.batch_size,
        "epochs": settings.steps * settings.batch_size / cache.meta["n_train_tokens"],
        "scale_in": scale_in,
        "scale_out": scale_out,
        "threshold": float(transcoder.threshold[0].detach()),
        "final_loss": losses[-1],
        "dead_latents_at_end": int(((settings.steps - 1 - last_fired) >= settings.dead_feature_window).sum()),
    }
    return transcoder, details
