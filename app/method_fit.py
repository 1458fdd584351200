"""Which training methods fit: the memory planner's figures for full, lora and qlora side by side, for the model and
GPUs (or CPU ranks) of the Train page's checked plan."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from app.i18n import t
from trainer_core.common.errors import UserError
from trainer_core.config.memory import MemoryPlan, fmt_bytes, model_shape, plan_memory

METHODS = ("full", "lora", "qlora")
# model_shape builds the model on the meta device (about a second for a 7B): the page reruns on every widget change,
# so the shape of the last few (model, lora section) pairs is kept.
_SHAPES: dict[tuple, object] = {}
_KEEP = 8


@dataclasses.dataclass
class MethodFit:
    method: str
    plan: MemoryPlan | None
    """None where the method cannot run here (qlora without a CUDA GPU)."""


def _shape(cfg):
    config_json = Path(cfg.model.path) / "config.json"
    stamp = config_json.stat().st_mtime_ns if config_json.is_file() else None
    key = (str(cfg.model.path), cfg.model.trust_remote_code, stamp,
           json.dumps(dataclasses.asdict(cfg.lora), sort_keys=True))
    if key not in _SHAPES:
        if len(_SHAPES) >= _KEEP:
            _SHAPES.pop(next(iter(_SHAPES)))
        # With the adapter counted: a full fine-tune's plan ignores it.
        _SHAPES[key] = model_shape(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code, lora=cfg.lora)
    return _SHAPES[key]


def method_fits(pf) -> list[MethodFit]:
    """Each method's plan for the checked plan `pf`'s config, placement, DeepSpeed config and hardware."""
    cfg, hw = pf.cfg, pf.hardware
    shape = _shape(cfg)
    out = []
    for method in METHODS:
        if method == "qlora" and not hw.has_gpu:
            out.append(MethodFit(method, None))  # bitsandbytes' 4-bit kernels need CUDA
            continue
        mcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, method=method))
        out.append(MethodFit(method, plan_memory(mcfg, shape, hw, ds=pf.ds_config)))
    return out


def fit_lines(pf) -> list[str]:
    """One markdown line per method: per-rank memory, host RAM, whether it fits."""
    lines = []
    for fit in method_fits(pf):
        name = t(f"fit.method.{fit.method}")
        if fit.plan is None:
            lines.append(t("fit.needs_cuda", method=name))
            continue
        p = fit.plan
        where = "fit.gpu" if p.on_gpu else "fit.cpu"
        lines.append(t(where, method=name, per_rank=fmt_bytes(p.per_rank_device_bytes), host=fmt_bytes(p.host_bytes),
                       verdict=t("fit.fits") if p.fits else t("fit.not_fit")))
    return lines


def show(pf) -> None:
    """The Train page's "which methods fit" block, under the memory plan."""
    import streamlit as st

    try:
        lines = fit_lines(pf)
    except UserError:
        return  # the memory plan above already says why the model's config cannot be read
    hw = pf.hardware
    where = (t("fit.on_gpus", n=pf.cfg.world_size, gpu=hw.gpus[0].name, memory=fmt_bytes(hw.gpus[0].total_bytes))
             if hw.has_gpu else t("fit.on_cpu", n=pf.cfg.world_size))
    with st.container(border=True, key="train-method-fit"):
        st.markdown(t("fit.title", model=Path(pf.cfg.model.path).name, where=where))
        st.markdown("\n".join(f"- {line}" for line in lines))
        if hw.has_gpu:
            st.caption(t("fit.unverified"))
