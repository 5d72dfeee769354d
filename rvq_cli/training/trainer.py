"""The training engine: one loop for every tokenizer, on Accelerate.

Single process on CPU or GPU; several processes through ``accelerate launch`` or ``torchrun``
(``torchrun --nproc_per_node 2 -m rvq_cli train RECIPE``). Each optimizer step draws
``grad_accum`` micro-batches per process; gradients are synchronised once per step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ..config import Recipe, recipe_to_yaml
from ..data.loader import batch_tensor, build_loader, data_patterns
from ..data.mp4 import video_decoder
from ..errors import RvqError, option
from ..hardware import (
    compile_modules,
    keep_grad_layouts,
    resolve_memory_format,
    resolve_precision,
    torch_memory_format,
    training_device,
)
from ..runs import (
    EMA_WEIGHTS,
    METRICS,
    RECIPE,
    SAMPLES,
    CheckpointState,
    checkpoint_name,
    flat_recipe,
    latest_checkpoint,
    load_checkpoint,
    recipe_changes,
    save_checkpoint,
    save_rng,
    saved_recipe,
)
from .build import build_optimizer, build_scheduler, count_parameters
from .ema import WeightEMA
from .objective import build_disc_optimizer, build_objective, describe
from .progress import TrainProgress
from .start import StartError, adopt_shared, build_start, fingerprint, shared_weights
from .trackers import check_trackers, init_trackers, log_grid, trackers_of


class TrainingError(RvqError):
    """A run that cannot start or continue; the message says why and what to do."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool = False
    last_metrics: dict = field(default_factory=dict)
    signal: int | None = None  # the signal that interrupted the run (SIGINT: Ctrl-C; SIGTERM: preemption)

    @property
    def exit_code(self) -> int:
        """0 for a finished run, else 128 + the signal's number (130 Ctrl-C, 143 SIGTERM), as a shell
        reports a process stopped by it: ``rvq train ... && rvq eval ...`` skips a half run."""
        return 128 + int(self.signal) if self.interrupted and self.signal else (130 if self.interrupted else 0)


def _check_resume_recipe(saved: Recipe, now: Recipe) -> None:
    changed = recipe_changes(saved, now)
    if changed:
        diffs = "; ".join(changed)
        raise TrainingError(f"the recipe differs from the one the run was started with ({diffs}). Resume with the "
                            "same recipe (only the step count and logging/checkpoint intervals may change), or start "
                            "a new run in another output.dir.")


def _check_batch(x: torch.Tensor, step: int) -> None:
    """Range and dtype of the first batch: catches 0–255 data fed as −1..1 (USERS.md)."""
    if not x.is_floating_point():
        raise TrainingError(f"training batch at step {step} has dtype {x.dtype}; images must be float in [-1, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise TrainingError(f"training batch at step {step} has values in [{lo:.3g}, {hi:.3g}]; images must be in "
                            "[-1, 1]. Check the data pipeline's normalisation.")


LOW_USAGE = 0.05  # fraction of the codebook used per batch below which a run is warned about


def low_usage_warning(usage: float, step: int, total_steps: int, quantizer) -> str | None:
    """A one-paragraph warning when codebook usage stays low after the first tenth of the run
    (at least 50 steps), naming remedies that fit this quantizer; None when all is well."""
    if step < max(50, total_steps // 10) or usage >= LOW_USAGE:
        return None
    remedies = []
    if quantizer.kind == "fsq":  # no codebook: a low usage means the encoder's latents crowd a few grid cells
        return (f"codebook usage is {usage:.1%} of the {quantizer.codebook_size} FSQ codes per batch at step {step}: "
                "the latents occupy few cells of the grid. Fewer levels (model.quantizer.levels) give fewer, "
                "larger cells.")
    if quantizer.estimator != "rotation":
        remedies.append("the rotation trick (model.quantizer.estimator=rotation)")
    if (quantizer.codebook_dim or quantizer.dim) > 8:
        remedies.append("a lower code dimension (model.quantizer.codebook_dim=8 or less)")
    if quantizer.dead_code_threshold == 0:
        remedies.append("dead-code restarts (model.quantizer.dead_code_threshold=1.0)")
    if quantizer.init != "kmeans":
        remedies.append("k-means initialisation (model.quantizer.init=kmeans)")
    tail = f" Remedies: {'; '.join(remedies)}." if remedies else ""
    return (f"codebook usage is {usage:.1%} of {quantizer.codebook_size} codes per batch at step {step}: the "
            f"codebook is collapsing.{tail}")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def reconstruction_loss(x: torch.Tensor, rec: torch.Tensor, kind: str) -> torch.Tensor:
    return F.mse_loss(rec.float(), x.float()) if kind == "l2" else F.l1_loss(rec.float(), x.float())


class Trainer:
    """Holds the run's objects; :meth:`run` trains to ``recipe.train.steps``."""

    def __init__(self, recipe: Recipe, run_dir: Path, resume: bool = False, quiet: bool = False,
                 start_from: Mapping[str, torch.Tensor] | None = None):
        self.recipe, self.run_dir, self.quiet = recipe, Path(run_dir), quiet
        t = recipe.train
        self.trackers = trackers_of(recipe.output)
        missing = check_trackers(self.trackers)
        if missing:
            raise TrainingError(missing)
        # Accelerate keeps one process-wide state; a second run in the same Python process (the
        # library used from a notebook or a test) may ask for another precision.
        AcceleratorState._reset_state(reset_partial_state=False)
        device = training_device()  # CUDA, MPS or the CPU
        try:
            self.precision = resolve_precision(t.precision, device)
        except ValueError as err:
            raise TrainingError(f"{err}.") from None
        self.memory_format = resolve_memory_format(t.memory_format, recipe.model.name, device)
        self._layout = torch_memory_format(self.memory_format)
        self.acc = Accelerator(mixed_precision=self.precision.value, cpu=device.type == "cpu",
                               log_with=self.trackers or None,
                               project_dir=str(self.run_dir))
        if recipe.loss.perceptual_weight > 0:  # fail before anything heavy when LPIPS cannot be built
            from ..losses import PerceptualError, find_vgg_weights

            try:
                find_vgg_weights(recipe.loss.perceptual_weights)
            except PerceptualError as err:
                raise TrainingError(str(err)) from None
        self._prepare_run_dir(resume)
        set_seed(t.seed)
        try:  # the tokenizer, the discriminator (GAN recipes), train.init_from loaded into them
            self.model, self.disc = build_start(recipe)
        except StartError as err:
            raise TrainingError(str(err)) from None
        self.model.to(memory_format=self._layout)
        self.optimizer = build_optimizer(self.model.parameters(), recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, t.steps)
        if self.disc is not None:
            self.disc.to(memory_format=self._layout)
        self.opt_d = build_disc_optimizer(self.disc, recipe.loss, recipe.optim.lr) if self.disc is not None else None
        self.state = CheckpointState(step=0, micro_batches=0, world_size=self.acc.num_processes,
                                     num_workers=recipe.data.num_workers, precision=self.precision.value,
                                     memory_format=self.memory_format.value)
        if not resume:
            self._start(start_from)
        self.ema = WeightEMA(self.model, t.ema_decay, self.acc.device) if t.ema_decay is not None else None
        if resume:
            self._resume()
        self.compiled = compile_modules(self.model, self.disc, recipe.loss.gan.r1_gamma > 0) if t.compile else []
        if self.acc.num_processes > 1:  # DDP's buckets take the parameters' strides
            keep_grad_layouts(self.model)
            if self.disc is not None:
                keep_grad_layouts(self.disc)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        if self.disc is not None:
            if self.acc.num_processes > 1 and self.acc.device.type == "cuda":
                # batch statistics over every process's batch (SyncBatchNorm runs on GPUs only; on
                # CPUs DDP keeps BatchNorm buffers in step by broadcasting rank 0's at each forward)
                self.disc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.disc)
            self.disc, self.opt_d = self.acc.prepare(self.disc, self.opt_d)
        self.objective = build_objective(recipe.loss, self.acc.device, self.disc,
                                         self.acc.unwrap_model(self.disc) if self.disc is not None else None,
                                         self.acc.unwrap_model(self.model).pixel_scale)
        with self.acc.main_process_first():  # the demo set is built once, by the main process
            self.train_pattern, self.val_pattern = data_patterns(recipe)
        self.recipe_yaml = recipe_to_yaml(recipe)
        self._checked = False
        self._stop, self._signal = False, None

    # ---------------------------------------------------------------- setup

    def _start(self, shared: Mapping[str, torch.Tensor] | None) -> None:
        """A new run: adopt the ``shared`` weights (rvq compare's reference of this seed) and
        record the fingerprints of the weights it starts from."""
        if shared is not None:
            try:
                adopt_shared(self.model, self.disc, shared)
            except ValueError as err:
                raise TrainingError(f"cannot start from the comparison's shared weights: {err}.") from None
        self.state.init_fingerprint = fingerprint(self.model.state_dict())
        self.state.shared_fingerprint = fingerprint(shared_weights(self.model, self.disc))

    def _prepare_run_dir(self, resume: bool) -> None:
        has_ckpt = latest_checkpoint(self.run_dir) is not None
        if resume and not has_ckpt:
            raise TrainingError(f"{option('resume')} {self.run_dir}: no checkpoint there to resume from (checkpoints "
                                "are folders named ckpt-NNNNNNNN with a state.json).")
        if not resume and has_ckpt:
            raise TrainingError(f"{self.run_dir} already holds checkpoints of a run. Continue it with "
                                f"{option('resume')} {self.run_dir}, or set output.dir=OTHER_DIR for a new run; "
                                "nothing was changed.")
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        _check_resume_recipe(saved_recipe(ckpt), self.recipe)
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler, rank=self.acc.process_index,
                                discriminator=self.disc, disc_optimizer=self.opt_d)
        if state.world_size != self.acc.num_processes or state.num_workers != self.recipe.data.num_workers:
            raise TrainingError(f"{ckpt} was written by {state.world_size} process(es) with {state.num_workers} data "
                                f"workers each; resume with the same numbers so every process continues its own data "
                                f"stream (now: {self.acc.num_processes} process(es), {self.recipe.data.num_workers} "
                                "workers).")
        state.precision, state.memory_format = self.precision.value, self.memory_format.value  # what runs now
        self.state = state
        if self.ema is not None:
            if not (ckpt / EMA_WEIGHTS).is_file():
                raise TrainingError(f"{ckpt} has no {EMA_WEIGHTS}, which train.ema_decay resumes from; the run "
                                    "was started without a weight EMA.")
            self.ema.load(load_file(str(ckpt / EMA_WEIGHTS)), state.ema_updates)

    # ---------------------------------------------------------------- steps

    def _micro_step(self, x: torch.Tensor, last: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (generator, then discriminator once the GAN is
        on); gradients sync only on the last micro-batch of the step."""
        out, metrics = self._generator_step(x, last)
        if self.objective.gan_on(self.state.step):
            metrics.update(self._discriminator_step(x, out.reconstruction, last))
        return metrics

    def _generator_step(self, x: torch.Tensor, last: bool):
        sync = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
        model = self.acc.unwrap_model(self.model)
        last_layer, quantizer, step = model.last_layer, model.quantize, self.state.step
        estimator = quantizer.estimator
        with sync, self.acc.autocast(), estimator.forward_context():
            out = self.model(x)
            loss, terms = self.objective.generator(x, out, last_layer, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()}")
            total = estimator.training_loss(loss, out, quantizer,
                                            lambda rec: self.objective.decoder_loss(x, rec, last_layer, step)[0])
        self.acc.backward(total / self.recipe.train.grad_accum)
        # the quantizer's metrics as a whole (usage, perplexity, quant_error, fallbacks, restarted, ...)
        metrics = {"loss": loss.detach(), "commitment": out.quantize.losses.commitment.detach(),
                   **vars(out.quantize.metrics)}
        metrics.update({k: v.detach() for k, v in terms.items()})
        if self.disc is not None:
            metrics.update({k: metrics.get(k, torch.zeros(())) for k in self.objective.gan_keys})
        metrics.update({k: torch.tensor(v) for k, v in estimator.metrics(quantizer).items()})  # gumbel: temperature
        return out, metrics

    def _discriminator_step(self, x: torch.Tensor, rec: torch.Tensor, last: bool) -> dict[str, torch.Tensor]:
        sync = contextlib.nullcontext() if last else self.acc.no_sync(self.disc)
        with sync, self.acc.autocast():
            d_loss, terms = self.objective.discriminator(x, rec, self.state.step)
        if not torch.isfinite(d_loss):
            raise FloatingPointError(f"discriminator loss is {d_loss.item()}")
        self.acc.backward(d_loss / self.recipe.train.grad_accum)
        return {k: v.detach() for k, v in terms.items()}

    def _optimizer_step(self, batches) -> dict[str, float]:
        t = self.recipe.train
        sums: dict[str, float] = {}
        skipped = 0
        self.acc.unwrap_model(self.model).quantize.anneal(self.state.step, t.steps)  # gumbel: temperature, KL weight
        for i in range(t.grad_accum):
            batch = next(batches)
            skipped += int(batch.get("skipped", 0))
            x = batch_tensor(batch).to(self.acc.device)
            if x.dim() == 4:
                x = x.contiguous(memory_format=self._layout)
            if not self._checked:
                _check_batch(x, self.state.step)
                self._checked = True
            for k, v in self._micro_step(x, last=i == t.grad_accum - 1).items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if t.grad_clip > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.gan_on(self.state.step):
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.acc.unwrap_model(self.model))
            self.state.ema_updates = self.ema.updates
        self.state.step += 1
        self.state.micro_batches = self.state.step * t.grad_accum  # the data position
        out = {k: v / t.grad_accum for k, v in sums.items()}
        cos = self.acc.unwrap_model(self.model).quantize.gradient_cosine()
        out["grad_cos"] = 1.0 if cos is None else cos  # cos(grad_e, g) through the estimator, this process
        out["fallbacks"], out["restarted"] = sums["fallbacks"], sums["restarted"]  # counts over the step
        out.update(lr=lr, skipped=skipped)
        return out

    # ---------------------------------------------------------------- outputs

    def save(self) -> Path | None:
        ckpt = self.run_dir / checkpoint_name(self.state.step)
        if self.acc.is_main_process:
            save_checkpoint(self.run_dir, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler,
                            self.state, self.recipe_yaml, self.recipe.train.keep_last,
                            self.objective.disc_module, self.opt_d, None if self.ema is None else self.ema.module)
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:  # the main process's RNG is saved inside the checkpoint
            save_rng(ckpt, self.acc.process_index)
        self.acc.wait_for_everyone()
        return ckpt

    @torch.no_grad()
    def sample(self, x: torch.Tensor) -> float:
        """Reconstruction grid of a fixed validation batch (originals above, reconstructions
        below) as samples/step-NNNNNNNN.png; returns that batch's reconstruction loss."""
        from torchvision.utils import make_grid, save_image

        model = self.acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        rec = model(x.to(self.acc.device)).reconstruction.float().clamp(-1, 1)
        model.train(was_training)
        loss = reconstruction_loss(x.to(rec.device), rec, self.recipe.loss.reconstruction).item()
        if self.acc.is_main_process:
            out = self.run_dir / SAMPLES / f"step-{self.state.step:08d}.png"
            out.parent.mkdir(exist_ok=True)
            if x.dim() == 5:  # clips: 8 evenly spaced frames of the first two, original above reconstruction
                t = x.shape[2]
                pick = torch.linspace(0, t - 1, min(8, t)).round().long()
                rows = [v[i].cpu()[:, pick].transpose(0, 1) for i in range(min(2, len(x))) for v in (x, rec)]
                grid = make_grid((torch.cat(rows) + 1) / 2, nrow=len(pick))
            else:
                grid = make_grid((torch.cat([x[:8].cpu(), rec[:8].cpu()]) + 1) / 2, nrow=min(8, len(x)))
            save_image(grid, out)
            log_grid(self.acc, grid, self.state.step)
        return loss

    def _val_batch(self) -> torch.Tensor | None:
        if self.val_pattern is None:
            return None
        for batch in build_loader(self.val_pattern, self.recipe, train=False, rank=self.acc.process_index,
                                  world_size=self.acc.num_processes):
            return batch_tensor(batch)[:8]
        return None

    # ---------------------------------------------------------------- loop

    def _on_signal(self, signum, frame) -> None:
        """First Ctrl-C or SIGTERM (a scheduler's preemption): finish the current optimizer step, save,
        exit. A second one: stop at once."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop, self._signal = True, signum
        if self.acc.is_main_process:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{what}: finishing this step and saving a checkpoint (again: stop without saving)")

    def run(self) -> TrainResult:
        t = self.recipe.train
        main = self.acc.is_main_process
        if main:
            (self.run_dir / RECIPE).write_text(self.recipe_yaml)
        init_trackers(self.acc, self.trackers, self.run_dir, self.recipe.output.project, flat_recipe(self.recipe))
        val_x = self._val_batch()
        batches = iter(build_loader(self.train_pattern, self.recipe, train=True, rank=self.acc.process_index,
                                    world_size=self.acc.num_processes, start_batch=self.state.micro_batches))
        log = open(self.run_dir / METRICS, "a") if main else None
        progress = TrainProgress(t.steps, self.state.step, quiet=self.quiet, silent=not main,
                                 unit="clip" if self.recipe.model.video else "img")
        window: list[dict] = []
        t0, images, last = time.perf_counter(), 0, {}
        interrupted, warned = False, False
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._on_signal) for s in handled} if _main_thread() else {}
        try:
            with progress:
                while self.state.step < t.steps and not self._stop:
                    try:
                        metrics = self._optimizer_step(batches)
                    except FloatingPointError as err:
                        good = latest_checkpoint(self.run_dir)
                        raise TrainingError(f"{err} at step {self.state.step + 1}; the run stopped. Last good "
                                            f"checkpoint: {good or 'none'}. Lower optim.lr, set train.grad_clip, or "
                                            "use train.precision=no to find the cause.") from None
                    images += t.batch_size * t.grad_accum * self.acc.num_processes
                    window.append(metrics)
                    step = self.state.step
                    if step % t.log_every == 0 or step == t.steps:
                        last = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                        last["fallbacks"] = sum(m["fallbacks"] for m in window)
                        last["skipped"] = sum(m["skipped"] for m in window)
                        last["lr"] = window[-1]["lr"]
                        elapsed = time.perf_counter() - t0
                        last.update(step=step, images_per_s=images / elapsed if elapsed > 0 else 0.0)
                        window, t0, images = [], time.perf_counter(), 0
                        if val_x is not None and (step % t.sample_every == 0 or step == t.steps):
                            last["val_rec_loss"] = self.sample(val_x)
                        if main:
                            log.write(json.dumps(last) + "\n")
                            log.flush()
                            self.acc.log({k: v for k, v in last.items() if k != "step"}, step=step)
                        progress.log(last)
                        warning = None if warned else low_usage_warning(last["usage"], step, t.steps,
                                                                         self.recipe.model.quantizer)
                        if warning and main:
                            warned = True
                            progress.warn(warning)
                    progress.advance(metrics)
                    if step % t.ckpt_every == 0 or step == t.steps:
                        self.save()
            if self._stop:
                interrupted = True
                self.save()
                if main:
                    print(f"interrupted at step {self.state.step}: saved "
                          f"{self.run_dir / checkpoint_name(self.state.step)}; "
                          f"continue with: rvq train RECIPE --resume {self.run_dir}")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if log:
                log.close()
            if self.trackers:
                self.acc.end_training()
        return TrainResult(self.run_dir, self.state.step, interrupted, last, self._signal if interrupted else None)


def train(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = False, quiet: bool = False,
          start_from: Mapping[str, torch.Tensor] | None = None) -> TrainResult:
    """Train the tokenizer a recipe describes; returns where the run is and its last metrics.
    ``start_from``: shared weights (:func:`rvq_cli.training.start.shared_weights`) a new run
    adopts in place of the ones its seed built."""
    trainer = Trainer(recipe, Path(run_dir or recipe.output.dir), resume=resume, quiet=quiet, start_from=start_from)
    if trainer.acc.is_main_process and not quiet:
        q = recipe.model.quantizer
        print(f"rvq train: {count_parameters(trainer.acc.unwrap_model(trainer.model)) / 1e6:.2f}M parameters, "
              + (f"FSQ levels {q.levels} (straight-through rounding), " if q.kind == "fsq" else
                 f"estimator {q.estimator}, ")
              + f"{q.codebook_size} codes, loss = "
              f"{describe(recipe.loss, q.beta, q.update == 'learned', q.vq_loss, q.kind == 'vq')}, "
              f"{trainer.acc.num_processes} process(es) on "
              f"{trainer.acc.device}, precision {trainer.precision}, memory format {trainer.memory_format}, "
              + (f"compiled: {', '.join(trainer.compiled)}, " if trainer.compiled else "")
              + (f"video decoder {video_decoder()}, " if recipe.model.video else "")
              + f"run dir {trainer.run_dir}")
    return trainer.run()
