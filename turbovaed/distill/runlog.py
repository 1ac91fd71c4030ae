"""The run's log: log.jsonl always (strict JSON), TensorBoard when asked, a progress bar on a terminal, else a plain
line every N steps. Rank 0 writes; the other ranks' Logger does nothing."""

from __future__ import annotations

import time

from turbovaed import logs
from turbovaed.distill.guard import strict_json
from turbovaed.distill.setup import Run
from turbovaed.io import InputError


class Logger:
    """log.jsonl always; TensorBoard when asked; a rich bar on a terminal, else a plain line every N steps."""

    def __init__(self, run: Run, start: int) -> None:
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

        self.run, self.active = run, run.rank == 0
        t = run.recipe.train
        terminal = logs.console().is_terminal
        self.bar = logs.progress(TextColumn("[bold]distill"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 disable=not (self.active and run.show_progress))
        self.plain = self.active and run.show_progress and not terminal
        self.task = self.bar.add_task("distill", total=t.steps, completed=start, info="")
        self.tb = None
        if self.active and t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise InputError("train.tensorboard = true needs TensorBoard: pip install 'turbovaed[tensorboard]'") \
                    from err
            self.tb = SummaryWriter(str(run.work / "tensorboard"))
        self.started, self.start = time.perf_counter(), start

    def __enter__(self) -> Logger:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        if self.tb:
            self.tb.close()

    def write(self, record: dict) -> None:
        if not self.active:
            return
        with self.run.log_path.open("a") as f:
            f.write(strict_json(record) + "\n")
        step = record["step"]
        if self.tb:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k.replace("eval_", "eval/"), v, step)
        if "loss" not in record:
            return
        self.bar.update(self.task, completed=step, info=f"loss {record['loss']:.4f}")
        if self.plain and (step % self.run.recipe.train.log_every == 0 or step == self.run.recipe.train.steps):
            done = step - self.start
            eta = (time.perf_counter() - self.started) / max(done, 1) * (self.run.recipe.train.steps - step)
            mem = f" peak {record['peak_mem_mib']:.0f} MiB" if "peak_mem_mib" in record else ""
            logs.say(f"step {step}/{self.run.recipe.train.steps} loss {record['loss']:.4f} "
                     f"{record['clips_per_s']:.2f} clips/s{mem} eta {eta / 60:.1f} min")
