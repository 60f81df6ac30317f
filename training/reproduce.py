"""`rnnserve-train reproduce`: presets trained with several seeds, so a gap to a tutorial's reported figure
can be told apart from the luck of one run. Writes reproduce.json and reproduce.md (a Markdown table) into
the output directory after every preset, so a long run can be read while it goes on.

    rnnserve-train reproduce --seeds 5 --data-dir ../shared/data          # every tutorial preset
    rnnserve-train reproduce imdb-lstm-tutorial reuters-tutorial-lstm --seeds 3
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from rnnserve.training.config import TUTORIAL_ACCURACY, preset_config
from rnnserve.training.train import train

FIRST_SEED = 1337  # the presets' own seed; further runs take the next ones


def seed_list(n: int) -> list[int]:
    return list(range(FIRST_SEED, FIRST_SEED + n))


def best_validation(run_dir: Path) -> float | None:
    """The highest validation accuracy of any epoch: what curve-reading tutorials report."""
    history = json.loads((run_dir / "history.json").read_text())
    return max(history["val_accuracy"]) if history.get("val_accuracy") else None


def summarize(preset: str, seeds: list[int], accuracies: list[float], seconds: list[float],
              best_val: list[float | None]) -> dict:
    mean = statistics.fmean(accuracies)
    known = [v for v in best_val if v is not None]
    sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    reported = TUTORIAL_ACCURACY.get(preset)
    return {"preset": preset, "seeds": seeds, "accuracies": accuracies, "mean": mean, "sd": sd,
            "min": min(accuracies), "max": max(accuracies), "reported": reported,
            # how many standard deviations the mean lies from the reported figure (None: no figure, or sd 0)
            "gap_sd": (mean - reported) / sd if reported is not None and sd > 0 else None,
            "best_validation": best_val,
            "best_validation_mean": statistics.fmean(known) if known else None,
            "best_validation_sd": statistics.stdev(known) if len(known) > 1 else None,
            "seconds_per_run": statistics.fmean(seconds)}


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | seeds | test accuracy: mean ± sd | min | max | tutorial reports | gap (sd) "
             "| best epoch's validation accuracy: mean ± sd | train time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reported = f"{r['reported']:.2%}" if r["reported"] is not None else "n/a"
        gap = f"{r['gap_sd']:+.1f}" if r["gap_sd"] is not None else "n/a"
        val = "n/a" if r["best_validation_mean"] is None else (
            f"{r['best_validation_mean']:.2%}" + (f" ± {r['best_validation_sd']:.2%}" if r["best_validation_sd"]
                                                  is not None else ""))
        lines.append(f"| {r['preset']} | {len(r['seeds'])} | {r['mean']:.2%} ± {r['sd']:.2%} | {r['min']:.2%} | "
                     f"{r['max']:.2%} | {reported} | {gap} | {val} | {r['seconds_per_run']:.0f} s |")
    return "\n".join(lines) + "\n"


def reproduce(presets: list[str], seeds: int, out_dir: str | Path, data_dir: str | Path | None = None,
              log=print, **overrides) -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in presets:
        accuracies, seconds, best_val = [], [], []
        for seed in seed_list(seeds):
            cfg = preset_config(preset, **overrides, seed=seed)
            run_dir = out / preset / f"seed-{seed}"
            started = time.perf_counter()
            metrics = train(cfg, run_dir, data_dir, verbose=0)
            seconds.append(time.perf_counter() - started)
            accuracies.append(metrics["test"]["accuracy"])
            best_val.append(best_validation(run_dir))
            log(f"{preset} seed {seed}: test accuracy {accuracies[-1]:.2%} ({seconds[-1]:.0f} s)")
        rows.append(summarize(preset, seed_list(seeds), accuracies, seconds, best_val))
        (out / "reproduce.json").write_text(json.dumps({"overrides": overrides, "results": rows}, indent=2))
        (out / "reproduce.md").write_text(markdown(rows))
    return rows
