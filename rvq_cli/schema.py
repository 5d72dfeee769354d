"""The recipe schema: every section of a recipe as a typed model, with every default in one
place. Loading, overrides and the checks across fields are in :mod:`rvq_cli.config`."""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .data.sources import DEMO
from .hardware import MEMORY_FORMATS, PRECISIONS
from .losses import DISCRIMINATORS, GAN_LOSSES, NORMS
from .models.tokenizer import PIXEL_NORMS, PROJECTIONS, QUANTIZER_KINDS
from .models.video import FLAVOURS
from .models.vit import WEIGHT_INITS
from .quantize.codebook import INITS
from .quantize.estimators import ESTIMATORS, GAMMAS
from .quantize.estimators.diveq import DIVEQ_NOISE_STD
from .quantize.estimators.gumbel import GUMBEL_LOGITS, GUMBEL_SAMPLES, GUMBEL_TEMPERATURE
from .quantize.estimators.ibq import IBQ_LOGITS
from .quantize.fsq import check_levels
from .quantize.parameterisations import CODEBOOKS
from .quantize.quantizer import COSINE_INITS, COSINE_OUTPUTS, EMA_COUNTS, VQ_LOSSES

__all__ = ["DEMO", "DataConfig", "EncoderConfig", "GANConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "OutputConfig", "QuantizerConfig", "Recipe", "StyleGAN2Config", "TimeSformerConfig", "TrainConfig",
           "ViTConfig"]



class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    train: str = Field(DEMO, description="webdataset shards (brace patterns allowed, e.g. data/train-{000..099}.tar) "
                       "or 'demo'")
    val: Optional[str] = Field(DEMO, description="validation shards, 'demo', or null for none")
    image_size: int = Field(64, ge=8, description="square crop fed to the model, in pixels")
    random_flip: bool = Field(True, description="horizontal flips for training samples")
    crop: Literal["random", "center"] = Field(
        "random", description="random: training takes random image_size crops of each stored image, evaluation "
        "resizes its short side to image_size and takes the centre; center: both take the central image_size "
        "square of the stored image, zero-padded where it is smaller, as torchvision's CenterCrop in the official "
        "Table 1 code on native-resolution ImageNet (prepare the shards without --size)")
    num_workers: int = Field(2, ge=0, description="data loader worker processes per training process")
    shuffle_buffer: int = Field(1000, ge=0, description="samples held for shuffling (0: no shuffle)")
    frames: int = Field(16, ge=1, description="video models: frames per clip")
    frame_stride: int = Field(1, ge=1, description="video models: take every k-th frame of the video")


class EncoderConfig(_Section):
    """The convolutional encoder/decoder of Esser et al. (taming-transformers, latent-diffusion)."""

    in_channels: int = Field(3, ge=1)
    ch: int = Field(128, ge=1, description="base channels")
    ch_mult: list[int] = Field([1, 1, 2, 2, 4], min_length=1,
                               description="channel multiplier per level; f = 2^(levels-1)")
    num_res_blocks: int = Field(2, ge=1)
    attn_resolutions: list[int] = Field([16], description="feature-map sizes that get attention blocks")
    z_channels: int = Field(256, ge=1, description="encoder output / decoder input channels")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups (32 in the published models)")


class QuantizerConfig(_Section):
    kind: Literal[QUANTIZER_KINDS] = Field(  # type: ignore[valid-type]
        "vq", description="the quantization layer: vq (the nearest code of a codebook, through the gradient "
        "estimator chosen by estimator) or fsq (finite scalar quantization, Mentzer et al. 2023: each of "
        "len(levels) channels rounded to one of its levels, an implicit codebook of ∏ levels codes, no codebook "
        "and no commitment loss; the other keys of this section are refused: docs/quantizer.md)")
    levels: Optional[list[int]] = Field(
        None, description="kind fsq: levels per code channel, each >= 3; the FSQ paper's sets: [8, 6, 5] (240 "
        "codes), [8, 5, 5, 5] (1000), [7, 5, 5, 5, 5] (4375), [8, 8, 8, 6, 5] (15360), [8, 8, 8, 5, 5, 5] (64000). "
        "Left out, codebook_size, codebook_dim and estimator follow from them: ∏ levels, len(levels), ste")
    estimator: str = Field("rotation", description="gradient estimator: " + ", ".join(ESTIMATORS))
    gamma: Optional[Union[float, str]] = Field(
        None, description="γ(e) of the rotation family (A.9.2): " + ", ".join(GAMMAS) + " or a number")
    codebook_size: int = Field(1024, ge=2)
    dim: int = Field(256, ge=1, description="channels entering the quantizer (pre-quant conv output)")
    codebook_dim: Optional[int] = Field(None, ge=1, description="factorised code dimension (null: same as dim)")
    lookup: Literal["euclidean", "cosine"] = "euclidean"
    update: Literal["ema", "learned"] = "ema"
    decay: float = Field(0.8, ge=0.0, lt=1.0, description="EMA decay (paper: 0.8)")
    beta: float = Field(1.0, ge=0.0, description="commitment weight (vq_loss taming_legacy: the codebook term's; "
                        "must be 0 with gumbel_logits linear, which has neither term)")
    vq_loss: Literal[VQ_LOSSES] = Field(  # type: ignore[valid-type]
        "vqvae", description="where beta goes: vqvae (β·commitment + codebook term) or taming_legacy (commitment + "
        "β·codebook term, taming-transformers' legacy quantizer that the paper's VQGAN rows ran)")
    init: Literal[INITS] = "kaiming_uniform"  # type: ignore[valid-type]
    kmeans_iters: int = Field(10, ge=0)
    dead_code_threshold: float = Field(0.0, ge=0.0)
    epsilon: float = Field(1e-6, gt=0.0, description="estimator 'exact': ε in L = L_q + ε L_e (§3)")
    temperature: tuple[float, float] = Field(GUMBEL_TEMPERATURE, description="estimator 'gumbel': softmax temperature "
                                             "at the start and at the end of training (cosine ramp)")
    temperature_steps: Optional[int] = Field(
        None, ge=1, description="estimator 'gumbel': optimizer steps of the temperature ramp, then constant at the "
        "end value (null: train.steps, the paper's 'over the course of training'; karpathy/deep-vector-quantization: "
        "150000)")
    kl_weight: float = Field(5e-4, ge=0.0, description="estimator 'gumbel': weight of KL(softmax(logits) ‖ uniform)")
    kl_warmup_steps: int = Field(
        0, ge=0, description="estimator 'gumbel': 0 holds kl_weight from the first step; N ramps it from 0 to "
        "kl_weight over the first N optimizer steps along the temperature's cosine, then holds it "
        "(karpathy/deep-vector-quantization: 5000)")
    gumbel_logits: Literal[GUMBEL_LOGITS] = Field(  # type: ignore[valid-type]
        "distance", description="estimator 'gumbel': the logits. distance: −‖e − c‖², so the sample is near the "
        "nearest code, which is the token; the recipe's commitment and codebook terms apply. linear: a learned "
        "Linear(dim, codebook_size) with bias on the quantizer's input (karpathy/deep-vector-quantization's 1×1 "
        "conv); the token is the argmax of the logits, there is no commitment or codebook term and the codebook "
        "learns through the mixture (needs update: learned, beta: 0, codebook_dim: null)")
    gumbel_sample: Literal[GUMBEL_SAMPLES] = Field(  # type: ignore[valid-type]
        "soft", description="estimator 'gumbel', in training: soft decodes the relaxed sample (karpathy's default), "
        "hard its one-hot, with the relaxed sample's gradient (straight-through, taming-transformers' GumbelVQ)")
    cosine_output: Literal[COSINE_OUTPUTS] = Field(  # type: ignore[valid-type]
        "as_is", description="cosine lookup: renormalize l2-normalises the estimator's output again, as the "
        "official Table 1 code (same value; the STE's gradient is then projected at q)")
    ema_counts: Literal[EMA_COUNTS] = Field(  # type: ignore[valid-type]
        "ones", description="initial EMA code counts: ones, or zeros as in vector-quantize-pytorch (the official "
        "Table 1 code), where a code not chosen in the first update jumps far out, then shrinks back by the decay")
    cosine_init: Literal[COSINE_INITS] = Field(  # type: ignore[valid-type]
        "unit", description="cosine lookup: the initial codes stored as unit vectors (unit), or as drawn (as_drawn: "
        "ViT-VQGAN's enhancing-transformers code keeps N(0, 1) codes of norm ≈ √d, normalised only at lookup, "
        "so a learned codebook's Adam steps turn them by smaller angles)")
    diveq_noise_std: float = Field(
        DIVEQ_NOISE_STD, ge=0.0, allow_inf_nan=False, description="estimator 'diveq': σ, the standard deviation "
        "of the noise on the direction of the simulated distortion (the authors' code: 1e-3; "
        "vector-quantize-pytorch's directional_reparam_variance is σ²)")
    ibq_logits: Literal[IBQ_LOGITS] = Field(  # type: ignore[valid-type]
        "dot", description="estimator 'ibq': the softmax's logits, dot (e·c, as SEED-Voken's IBQ; the token is "
        "their argmax) or distance (−‖e − c‖², the token is the nearest code)")
    ibq_entropy_weight: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="estimator 'ibq': weight of "
                                      "the entropy term (per-row entropy − entropy of the batch mean); 0: off")
    ibq_entropy_temperature: float = Field(0.01, gt=0.0, allow_inf_nan=False, description="estimator 'ibq': τ "
                                           "of the entropy term's softmax(logits / τ)")
    codebook: Literal[CODEBOOKS] = Field(  # type: ignore[valid-type]
        "plain", description="how the codes are made, for every estimator: plain (the stored codes), simvq "
        "(SimVQ, Zhu et al. 2024, arXiv 2411.02038: a frozen random basis C times one learned linear map W, codes "
        "C Wᵀ, so every code moves with W; needs update: learned, and the paper's beta is 0.25) or affine (Huh et "
        "al. 2023, 'Straightening Out the Straight-Through Estimator', ICML: the stored codes shifted and scaled "
        "per channel onto the running mean and variance of the latents; euclidean lookup): docs/quantizer.md")
    affine_batch_decay: float = Field(0.99, ge=0.0, lt=1.0, description="codebook 'affine': decay of the running "
                                      "mean and variance of the latents (vector-quantize-pytorch's "
                                      "affine_param_batch_decay)")
    affine_codebook_decay: float = Field(0.9, ge=0.0, lt=1.0, description="codebook 'affine': decay of the running "
                                         "mean and variance of the stored codes (affine_param_codebook_decay)")
    affine_sync: bool = Field(True, description="codebook 'affine': the latents' statistics over every process's "
                              "batch (all-reduced, vector-quantize-pytorch's sync_affine_param), so all ranks keep "
                              "the same codes; false: each process its own batch (vector-quantize-pytorch's default; "
                              "the ranks' codes then differ); the same in one process")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, v):
        if not all(t > 0 and math.isfinite(t) for t in v):
            raise ValueError(f"temperatures must be finite and > 0, got {list(v)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _fsq_defaults(cls, data):
        """kind fsq: codebook_size, codebook_dim and estimator default to ∏ levels, len(levels) and ste
        (values that disagree are refused by the recipe check, naming both)."""
        levels = data.get("levels") if isinstance(data, dict) and data.get("kind") == "fsq" else None
        if isinstance(levels, list) and levels and all(isinstance(n, int) and n > 0 for n in levels):
            data = {"codebook_size": math.prod(levels), "codebook_dim": len(levels), "estimator": "ste", **data}
        return data

    @field_validator("levels")
    @classmethod
    def _valid_levels(cls, v):
        return v if v is None else list(check_levels(v))

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"unknown estimator {v!r}; valid: {', '.join(ESTIMATORS)}")
        return v

    @field_validator("gamma")
    @classmethod
    def _known_gamma(cls, v):
        if isinstance(v, str) and v not in GAMMAS:
            raise ValueError(f"unknown gamma {v!r}; valid: {', '.join(GAMMAS)}, or a number")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("gamma must be finite")
        return v


class ViTConfig(_Section):
    """ViT-VQGAN's transformer encoder/decoder (Yu et al. 2022); defaults: Table 10's small model."""

    in_channels: int = Field(3, ge=1)
    patch_size: int = Field(8, ge=1, description="p: p×p pixel patches, one token each")
    dim: int = Field(512, ge=1, description="hidden width (also the channels entering the pre-quant projection)")
    depth: int = Field(8, ge=0, description="transformer blocks in the encoder and in the decoder")
    heads: int = Field(8, ge=1)
    mlp_dim: int = Field(1024, ge=1)
    activation: Literal["tanh", "gelu"] = Field("tanh", description="MLP activation (tanh: ViT-VQGAN's)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init: Literal[WEIGHT_INITS] = Field(  # type: ignore[valid-type]
        "trunc_normal", description="weight init: trunc_normal (N(0, 0.02²) cut at ±2σ, rvq's) or xavier "
        "(xavier-uniform Linear and conv weights, as enhancing-transformers, the Table 4 code)")


class TimeSformerConfig(ViTConfig):
    """The TimeSformer video encoder/decoder (divided space-time attention): the ViT's fields,
    with Table 11's BAIR model as defaults."""

    patch_size: int = Field(2, ge=1, description="p: p×p pixel patches of each frame, one token each")
    dim: int = Field(256, ge=1, description="hidden width (also the channels entering the pre-quant projection)")
    heads: int = Field(4, ge=1)
    mlp_dim: int = Field(768, ge=1)
    activation: Literal["tanh", "gelu"] = Field("gelu", description="MLP activation (gelu: TimeSformer's)")
    flavour: Literal[FLAVOURS] = Field(  # type: ignore[valid-type]
        "rvq", description="rvq (no class token, fixed sin-cos embeddings, no qkv bias, LayerNorm ε 1e-5) or "
        "huggingface (transformers' TimesformerEmbeddings + TimesformerLayer: a class token, learned position and "
        "time embeddings, qkv bias, ε 1e-6, its init; the Table 5 code)")
    init: Optional[Literal[WEIGHT_INITS]] = Field(  # type: ignore[valid-type]
        None, description="weight init as model.vit.init, or null for the flavour's own (rvq: trunc_normal; "
        "huggingface: transformers' N(0, 0.02²), embeddings as there)")


class ModelConfig(_Section):
    name: Literal["conv", "vit", "timesformer"] = Field(
        "conv", description="model family: conv (VQ-VAE/VQGAN), vit (ViT-VQGAN) or timesformer (video)")
    encoder: EncoderConfig = Field(EncoderConfig(), description="the conv family's encoder/decoder")
    vit: ViTConfig = Field(ViTConfig(), description="the vit family's encoder/decoder")
    timesformer: TimeSformerConfig = Field(TimeSformerConfig(), description="the timesformer family's encoder/decoder")
    quantizer: QuantizerConfig = QuantizerConfig()
    projection: Literal[PROJECTIONS] = Field(  # type: ignore[valid-type]
        "conv", description="around the quantizer: conv (taming's 1×1 convs z_channels ↔ quantizer.dim), none "
        "(needs z_channels == quantizer.dim: the official Table 1 VQ-VAE when they match), or conv_layernorm "
        "(the 1×1 conv, then LayerNorm over channels: its cosine 1024 × 32 model)")
    pixel_norm: Literal[PIXEL_NORMS] = Field(  # type: ignore[valid-type]
        "signed", description="what the encoder sees and the decoder emits: signed ([-1, 1] images, taming), unit "
        "([0, 1] pixels, enhancing-transformers' ViT-VQGAN) or clip (CLIP's per-channel mean/std of [0, 1] pixels, "
        "the official Table 1 code); the reconstruction loss is taken in that space (unit: 1/4 of the [-1, 1] MSE, "
        "clip: ≈3.5×); data, eval images and tokens stay [-1, 1]")

    @property
    def z_channels(self) -> int:
        """Channels of the encoder output (conv: encoder.z_channels; transformers: their width)."""
        return {"vit": self.vit.dim, "timesformer": self.timesformer.dim}.get(self.name, self.encoder.z_channels)

    @property
    def in_channels(self) -> int:
        return {"vit": self.vit.in_channels, "timesformer": self.timesformer.in_channels}.get(
            self.name, self.encoder.in_channels)

    @property
    def video(self) -> bool:
        """Whether the model takes clips (B, C, T, H, W) rather than images."""
        return self.name == "timesformer"


class StyleGAN2Config(_Section):
    """Widths of the StyleGAN2 discriminator (loss.gan.discriminator: stylegan2)."""

    channel_multiplier: int = Field(2, ge=1, description="ch(r) = min(max_channels, 16384 × channel_multiplier / r) "
                                    "channels at r pixels (2: StyleGAN2's and enhancing-transformers', 128 at 256 px)")
    max_channels: int = Field(512, ge=1, description="cap of ch(r) (512: StyleGAN2's, reached at 64 px and below)")


class GANConfig(_Section):
    """The adversarial part of the VQGAN objective: a discriminator, its loss, R1, and its own optimizer."""

    weight: float = Field(0.0, ge=0.0, description="w_gan of the generator's adversarial term (0: no GAN)")
    start: int = Field(0, ge=0,
                       description="optimizer step at which the discriminator and the adversarial term switch on")
    discriminator: Literal[DISCRIMINATORS] = Field(  # type: ignore[valid-type]
        "patchgan", description="patchgan (pix2pix/taming's, keys layers, channels, norm) or stylegan2 (StyleGAN2's "
        "residual discriminator with minibatch stddev, enhancing-transformers' for ViT-VQGAN; keys in stylegan2; "
        "needs a power-of-two data.image_size; judges [0, 1] images as upstream)")
    loss: Literal[tuple(GAN_LOSSES)] = Field(  # type: ignore[valid-type]
        "hinge", description="hinge | vanilla (softplus discriminator loss; both with taming's generator loss "
        "−mean D(x̂)) | non_saturating (vanilla's discriminator loss with the generator loss mean softplus(−D(x̂)))")
    adaptive: bool = Field(True, description="scale the adversarial term by λ = ‖∇L_nll‖/(‖∇L_G‖+1e-4) at the "
                           "decoder's last layer")
    max_adaptive: float = Field(1e4, gt=0.0, description="clamp of λ")
    layers: int = Field(3, ge=1, description="patchgan: stride-2 convolutions")
    channels: int = Field(64, ge=1, description="patchgan: channels of its first convolution")
    norm: Literal[NORMS] = Field("batch", description="patchgan: normalisation")  # type: ignore[valid-type]
    stylegan2: StyleGAN2Config = Field(StyleGAN2Config(), description="stylegan2: its widths")
    r1_gamma: float = Field(0.0, ge=0.0, description="γ of the R1 penalty (γ/2)·E‖∇_x D(x)‖² on real images "
                            "(Mescheder et al. 2018; 0: off), added to the discriminator's loss")
    r1_every: int = Field(16, ge=1, description="lazy R1 (StyleGAN2): the penalty on optimizer steps where "
                          "step % r1_every == 0 only, multiplied by r1_every (1: every step)")
    lr: Optional[float] = Field(None, gt=0.0, description="discriminator learning rate (null: optim.lr)")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="the discriminator's optimizer (taming: adam)")
    betas: tuple[float, float] = Field((0.5, 0.9), description="discriminator Adam betas (taming: 0.5, 0.9)")
    weight_decay: float = Field(0.0, ge=0.0, description="discriminator weight decay (adamw: decoupled; adam: L2)")


class LossConfig(_Section):
    reconstruction: Literal["l2", "l1"] = Field("l2", description="pixel loss on [-1, 1] images")
    rec_weight: float = Field(1.0, ge=0.0)
    laplace_weight: float = Field(0.0, ge=0.0,
                                  description="ViT-VQGAN's 'logit-laplace' term: mean |x̂ − x| on [0, 1] images")
    gaussian_weight: float = Field(0.0, ge=0.0, description="ViT-VQGAN's gaussian term: mean (x̂ − x)² on [0, 1] images")
    perceptual_weight: float = Field(0.0, ge=0.0, description="LPIPS (VGG16) weight; needs the VGG16 weights file")
    perceptual_weights: Optional[str] = Field(
        None, description="VGG16 weights file (null: $RVQ_VGG16_WEIGHTS or torch's cache)")
    codebook_weight: float = Field(1.0, ge=0.0,
                                   description="multiplies the quantizer's loss (β·commitment + codebook term)")
    gan: GANConfig = GANConfig()


class OptimConfig(_Section):
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-4, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    eps: float = Field(1e-8, gt=0.0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine floor as a fraction of lr")
    decay_steps: Optional[int] = Field(None, ge=1, description="cosine: the step at which lr reaches the floor, "
                                       "then stays there (null: train.steps)")


class TrainConfig(_Section):
    steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="per process, per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    precision: Optional[Literal[PRECISIONS]] = Field(  # type: ignore[valid-type]
        None, description="autocast precision: no (fp32), bf16, fp16, or auto (bf16 where the device runs it "
        "natively: CUDA with bf16, CPUs with AVX512-BF16 or AMX; else fp32); unset (null): Accelerate's setting "
        "(accelerate launch --mixed_precision, accelerate config), fp32 without one. The quantizer computes in fp32 "
        "always")
    memory_format: Literal[MEMORY_FORMATS] = Field(  # type: ignore[valid-type]
        "auto", description="layout of the conv family's weights and inputs (channels_last: NHWC); auto: "
        "channels_last for conv models on the CPU (faster there with rvq's GroupNorm C loops), else contiguous")
    compile: bool = Field(False, description="compile the encoder, the decoder and the discriminator with "
                          "torch.compile (the quantizer stays eager); the first steps pay the compilation")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm (0: no clipping)")
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=1, description="steps between reconstruction grids")
    ckpt_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1, description="checkpoints kept")
    seed: int = 0
    ema_decay: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="model-weight EMA: an exponential moving average of the tokenizer's "
        "parameters (torch's AveragedModel; e.g. 0.999), saved beside the weights and used by eval / encode / decode "
        "(null: none)")
    init_from: Optional[str] = Field(
        None, description="a run directory or checkpoint folder (of rvq train, or of rvq import taming) whose weights "
        "a new run starts from: the tokenizer's (the same architecture and quantizer; the estimator may differ) and "
        "the discriminator's where both have one; a resumed run continues from its own checkpoint instead")

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        """YAML 1.1 reads a bare ``no`` as false: ``precision: no`` means fp32, as written."""
        return "no" if v is False else v


class OutputConfig(_Section):
    dir: str = Field("runs/run", description="run directory")
    tensorboard: bool = Field(False, description="the same as tensorboard in log_with")
    log_with: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        [], description="experiment trackers through Accelerate: metrics, the recipe and the reconstruction grids "
        "(tensorboard: RUN_DIR/rvq; wandb: RUN_DIR/wandb, WANDB_MODE=offline for none online; mlflow: "
        "$MLFLOW_TRACKING_URI or RUN_DIR/mlruns)")
    project: str = Field("rvq", description="the trackers' project (wandb) or experiment (mlflow) name")


class Recipe(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()
