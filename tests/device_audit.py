"""A torch function mode that catches CPU-only code in automl-mpq, on a CPU.

On a machine without a GPU every tensor lands on the CPU whether or not the code asked for the
model's device, so a run that passes proves nothing about a GPU run. :class:`DeviceAudit`
looks at *how* the project's own code makes tensors instead of where they land. While it is
active, every call from a file of the audited packages (``automl``, ``envs``, ``agents``,
``search_spaces``; the export layer, which copies to the CPU on purpose, and the data and
reference-training packages are left out) is checked, and a finding is recorded when:

- a factory (``torch.zeros``, ``torch.tensor``, ``torch.randint``, ``torch.arange``, ...) is
  called without a ``device`` argument, or with one other than the model's: on a GPU the
  tensor would be made on the CPU and meet CUDA tensors later;
- a random generator is made without a device (``torch.Generator()``), or a draw is made
  with a generator on another device than its output;
- ``Tensor.numpy()`` is called on a tensor that did not come from ``.cpu()`` /
  ``.to("cpu")`` (it fails on a CUDA tensor);
- one call mixes tensors of two devices (caught for real on a GPU).

Constants made when a module is imported are host tensors by design (``automl.quant.fake``'s
clipping ratios) and are not flagged; their uses move them, which the last check verifies on a GPU.

Findings are recorded, not raised, so that code that catches every exception (the incremental
evaluator falls back to full passes when tracing fails) cannot hide them. One finding per call
site. Use it as a context manager::

    with DeviceAudit(torch.device("cpu")) as audit:
        automl.search(task, ...)
    assert not audit.findings, audit.report()
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
AUDITED = tuple(str(ROOT / p) for p in ("automl", "envs", "agents", "search_spaces"))
EXEMPT = tuple(str(ROOT / "automl" / p) for p in ("export", "data", "reference"))
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.scalar_tensor, torch.zeros, torch.ones, torch.empty, torch.full,
    torch.empty_strided, torch.arange, torch.linspace, torch.logspace, torch.eye, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.tril_indices, torch.triu_indices,
}  # torch.from_numpy takes no device and is invisible to function modes: its arrays are the host's
TO_HOST = {torch.Tensor.cpu, torch.Tensor.to}
_SKIP = (str(Path(torch.__file__).parent / "overrides.py"), str(Path(torch.__file__).parent / "utils" / "_device.py"),
         __file__)


class DeviceAudit(TorchFunctionMode):
    """Records every place where audited code makes a tensor or generator off ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.findings: dict[str, str] = {}  # "file:line" -> what happened there
        self.calls = 0
        self._host: dict[int, weakref.ref[torch.Tensor]] = {}  # by id: a tensor's == is elementwise
        self._generator: Any = None

    # the generator class is patched while the audit is on ------------------------------
    def __enter__(self) -> DeviceAudit:
        audit, original = self, torch.Generator

        class AuditedGenerator(original):  # type: ignore[misc, valid-type]
            def __init__(self, device: Any = None) -> None:
                site = audit._site()
                if site is not None and (device is None or not _same(torch.device(device), audit.device)):
                    audit._find(site, f"torch.Generator({'' if device is None else repr(device)}) makes a generator on "
                                      f"{'the CPU' if device is None else device}, not on the model's {audit.device}")

        self._generator = original
        torch.Generator = AuditedGenerator  # type: ignore[misc]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.Generator = self._generator  # type: ignore[misc]
        super().__exit__(*exc)

    # checks ----------------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self.calls += 1
        site = self._site()
        if site is not None:
            self._check(site, func, args, kwargs)
        out = func(*args, **kwargs)
        self._track_host(func, args, kwargs, out)
        return out

    def _check(self, site: str, func: Any, args: tuple, kwargs: dict) -> None:
        name = getattr(func, "__name__", str(func))
        if func in FACTORIES:
            device = kwargs.get("device")
            if device is None:
                self._find(site, f"torch.{name}(...) without device= makes its tensor on the CPU, not on the model's "
                                 f"{self.device}")
            elif not _same(torch.device(device), self.device):
                self._find(site, f"torch.{name}(..., device={device!r}) is not the model's {self.device}")
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and not _same(generator.device, self.device):
            self._find(site, f"{name} draws with a generator on {generator.device}, not on the model's {self.device}")
        if func is torch.Tensor.numpy and args and not self._is_host(args[0]):
            self._find(site, "Tensor.numpy() on a tensor that did not come from .cpu() (fails on a GPU tensor)")
        devices = {a.device for a in _tensors(args, kwargs) if a.dim() > 0 or a.device.type != "cpu"}
        if len(devices) > 1:
            self._find(site, f"{name} mixes tensors on {sorted(map(str, devices))}")

    def _track_host(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Outputs of ``.cpu()`` / ``.to("cpu")``, and of any call on such a tensor, may go to numpy."""
        if not isinstance(out, torch.Tensor):
            return
        to_host = func in TO_HOST and out.device.type == "cpu" and (
            func is torch.Tensor.cpu or _names_cpu(args[1:], kwargs))
        if to_host or (args and isinstance(args[0], torch.Tensor) and self._is_host(args[0])):
            self._host[id(out)] = weakref.ref(out)

    def _is_host(self, t: Any) -> bool:
        ref = self._host.get(id(t))
        return ref is not None and ref() is t

    def _site(self) -> str | None:
        """``file:line`` of the audited code that made the current call, or ``None``."""
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename in _SKIP:
            frame = frame.f_back
        if frame is None:
            return None
        path = frame.f_code.co_filename
        if not path.startswith(AUDITED) or path.startswith(EXEMPT) or frame.f_code.co_name == "<module>":
            return None  # module-level constants are host tensors by design, moved where they are used
        return f"{Path(path).relative_to(ROOT)}:{frame.f_lineno}"

    def _find(self, site: str, what: str) -> None:
        self.findings.setdefault(site, what)

    def report(self) -> str:
        """One line per finding: where, and what."""
        return "\n".join(f"{site}: {what}" for site, what in sorted(self.findings.items()))


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _names_cpu(args: tuple, kwargs: dict) -> bool:
    values = [*args, kwargs.get("device")]
    return any(isinstance(v, (str, torch.device)) and torch.device(v).type == "cpu" for v in values if v is not None)


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out
