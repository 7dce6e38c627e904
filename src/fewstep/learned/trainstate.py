"""The whole state of a distillation run in one safetensors file, so a killed run resumes bitwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..io import SafetensorsFileError, read_safetensors, write_safetensors
from ..jsonio import load_json
from .sampler import CheckpointError

__all__ = ["TrainState", "settings_diff", "world"]


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def settings_diff(saved: Any, current: str, limit: int = 6) -> str:
    """What differs between two fingerprints (JSON text), e.g. "training.seed: 0 there, 1 now; time_shift: ..."."""
    try:
        there = _flatten(load_json(saved, what="fingerprint", expect=dict), "", {}) if isinstance(saved, str) else None
    except ValueError:
        there = None
    if there is None:
        return "its settings are missing or unreadable"
    now = _flatten(json.loads(current), "", {})

    def show(d: dict[str, Any], k: str) -> str:
        if k not in d:
            return "absent"
        v = d[k]
        if isinstance(v, list) and len(json.dumps(v)) > 40:  # e.g. sigmas: the first values and the count
            head = ", ".join(f"{x:.4g}" if isinstance(x, float) else json.dumps(x)[:12] for x in v[:3])
            return f"[{head}, ... {len(v)} values]"
        return json.dumps(v)[:60]

    # changed values before added / removed ones, outer settings before nested ones
    keys = sorted((k for k in there.keys() | now.keys() if there.get(k, ...) != now.get(k, ...)),
                  key=lambda k: (k not in there or k not in now, k.count("."), k))
    parts = [f"{k or 'settings'}: {show(there, k)} there, {show(now, k)} now" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return "; ".join(parts) if parts else "same settings, other encoding"


class TrainState:
    """Module weights, Adam moments, learning-rate schedule, iteration and losses in one safetensors file with
    JSON metadata, written atomically; ``fingerprint`` (the run's settings) must match to resume."""

    FORMAT = "fewstep-train-state"

    def __init__(self, path: Any, checkpoint_every: int, fingerprint: dict[str, Any], modules: list[torch.nn.Module],
                 opt: torch.optim.Optimizer, lr_sched: Any) -> None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be a non-negative int, got {checkpoint_every!r}")
        if checkpoint_every and path is None:
            raise ValueError("checkpoint_every needs state_path")
        self.path = None if path is None else Path(path)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)
        self.modules, self.opt, self.lr_sched = modules, opt, lr_sched

    def save(self, iteration: int, losses: list[float]) -> None:
        tensors = {f"module{k}.{n}": v.detach().cpu().contiguous()
                   for k, m in enumerate(self.modules) for n, v in m.state_dict().items()}
        osd = self.opt.state_dict()
        for pid, st in osd["state"].items():
            for n, v in st.items():
                tensors[f"adam.{pid}.{n}"] = torch.as_tensor(v).detach().cpu().contiguous()
        meta = {"format": self.FORMAT, "fingerprint": self.fingerprint, "iteration": str(iteration),
                "losses": json.dumps(losses), "param_groups": json.dumps(osd["param_groups"], sort_keys=True),
                "lr_sched": json.dumps(self.lr_sched.state_dict() if self.lr_sched is not None else None,
                                       sort_keys=True)}
        write_safetensors(self.path, tensors, meta)

    def load(self, losses: list[float]) -> int:
        """Restore the state if the file exists (returns the iteration to continue from), else 0. Under
        torch.distributed every rank reads the file (rank 0 wrote it), then the ranks compare their iterations: this
        also makes them wait for each other (rank 0 removes the file when training ends, which must not happen before
        a slower rank has read it) and refuses a state that not every process could read."""
        start = self._load(losses)
        if world()[1] > 1:
            got = torch.tensor([start, -start], dtype=torch.int64)
            torch.distributed.all_reduce(got, op=torch.distributed.ReduceOp.MAX)
            if int(got[0]) != start or -int(got[1]) != start:
                raise CheckpointError(f"the processes found {self.path} at different iterations ({-int(got[1])} to "
                                      f"{int(got[0])}); every process must read the same file (a shared folder)")
        return start

    def _load(self, losses: list[float]) -> int:
        if self.path is None:
            raise ValueError("resume needs state_path")
        if not self.path.exists():
            return 0
        try:
            tensors, meta = read_safetensors(self.path, fmt=self.FORMAT, what="fewstep training state",
                                             check_finite=True)
        except SafetensorsFileError as e:
            raise CheckpointError(str(e)) from None
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{self.path} was saved by a run with other settings "
                                  f"({settings_diff(meta.get('fingerprint'), self.fingerprint)}); remove it or use the "
                                  "same command to resume")
        try:
            for k, m in enumerate(self.modules):
                pre = f"module{k}."
                m.load_state_dict({n[len(pre):]: v for n, v in tensors.items() if n.startswith(pre)}, strict=True)
            state: dict[int, dict[str, torch.Tensor]] = {}
            for n, v in tensors.items():
                if n.startswith("adam."):
                    _, pid, key = n.split(".", 2)
                    state.setdefault(int(pid), {})[key] = v
            self.opt.load_state_dict({"state": state, "param_groups": load_json(meta["param_groups"],
                                                                                 what="param_groups", expect=list)})
            if self.lr_sched is not None:
                self.lr_sched.load_state_dict(load_json(meta["lr_sched"], what="lr_sched", expect=dict))
            saved_losses = load_json(meta["losses"], what="losses", expect=list)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in saved_losses):
                raise ValueError("losses must be a list of numbers")
            losses.extend(saved_losses)
            return int(meta["iteration"])
        except (KeyError, ValueError, RuntimeError, TypeError, RecursionError) as e:
            raise CheckpointError(f"{self.path}: training state does not fit this run: {e}") from None

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
