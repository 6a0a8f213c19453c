r"""Native CPU kernels of the ``fused`` backend: ``native.c``, built on first use, called through ctypes.

For a dense block with edge features ``x`` of shape ``(B, out, in, K)``, row states ``p``
``(B, out, H)`` and column states ``q`` ``(B, in, H)`` (receivers and senders for ``reverse=False``,
senders and receivers for ``reverse=True``):

.. math::

    z_{vu} = p_v + q_u + \sum_{k < K} x_{vuk} C_k

* forward: :math:`\sum_u \phi(z_{vu})` (rows receive) or :math:`\sum_v \phi(z_{vu})` (columns receive);
* backward, with :math:`G_{vu} = g \odot \phi'(z_{vu})` (``g`` the gradient of the receivers):
  :math:`\partial L/\partial p_v = \sum_u G_{vu}`, :math:`\partial L/\partial q_u = \sum_v G_{vu}`,
  :math:`\partial L/\partial C_k = \sum_{b,v,u} x_{vuk} G_{vu}` and, only when ``x`` requires grad,
  :math:`\partial L/\partial x_{vuk} = \langle G_{vu}, C_k \rangle`.

``native.c`` computes each in one sweep over the block that recomputes ``z`` 16 channels at a
time in vector registers (``H`` padded with zero channels to a multiple of 16): nothing
edge-sized is allocated, and threads (OpenMP, ``torch.get_num_threads()`` of them) split the
block by rows with results independent of scheduling.

**Building.** The first use in a process compiles ``native.c`` with the machine's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native -ffp-contract=fast``, OpenMP where
the compiler has it), a few seconds, into a cache directory (``$WGRAPH_CACHE_DIR``, else
``$XDG_CACHE_HOME/wgraph`` or ``~/.cache/wgraph``). The file name hashes the source, the compiler,
its flags and the CPU, so a shared home directory never hands one machine another's binary.
Later processes load the cached library (a library found there is loaded as it is: keep the
directory writable by you only, as for any compiled-extension cache). Without a working compiler,
a warning names the reason once and :mod:`wgraph.kernels.fused` runs its eager tiles (slower, same results); set
``WGRAPH_NATIVE=0`` to choose the tiles outright.

Used for float32 / float64 CPU tensors and the activations ``native.c`` implements (it says which:
:func:`unusable`); other cases take the tiles. Activation codes are positions in
:data:`wgraph.kernels.spec.ACTIVATION_TABLE`, passed to the compiler as ``-DWG_ACT_<NAME>=<code>``.
NaN and Inf propagate as in torch (ReLU is ``z <= 0 ? 0 : z``, which keeps a NaN, and its
derivative passes the gradient of a NaN on, as ``threshold_backward`` does).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .spec import ACTIVATION_TABLE, act_code

#: Use the native kernels (``WGRAPH_NATIVE=0`` in the environment turns them off at import).
ENABLED = os.environ.get("WGRAPH_NATIVE", "1") != "0"

SOURCE = Path(__file__).with_name("native.c")

#: Compiler flag sets tried in order; the first that builds is used (OpenMP and ``-march=native``
#: are optional: without them the kernels run on one thread, or with the baseline instruction set).
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp"),
    ("-O3", "-march=native"),
    ("-O3", "-fopenmp"),
    ("-O3",),
)
#: Flags of every build. ``-std=c11`` alone would stop GCC from contracting ``a * b + c`` into fused
#: multiply-adds, which these FMA-bound loops are made of; the flag contracts them. The activation
#: codes come from :data:`wgraph.kernels.spec.ACTIVATION_TABLE`.
_COMMON = (
    "-std=c11",
    "-ffp-contract=fast",
    "-fPIC",
    "-shared",
    "-Wno-psabi",
    *(f"-DWG_ACT_{a.name.upper()}={code}" for code, a in enumerate(ACTIVATION_TABLE)),
)

ABI_VERSION = 5

#: Channels per vector chunk of ``native.c``: H is padded with zero channels to a multiple of it
#: (phi(0) = 0 for every activation and zero gradients stay zero, so the padding contributes nothing).
LANES = 16
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lib: ctypes.CDLL | None = None
_failed: list[str] = []  # why building or loading failed, once it has
_lock = threading.Lock()


class BuildError(RuntimeError):
    """The C compiler is missing or could not build ``native.c`` (the message holds its output)."""


def cache_dir() -> Path:
    """Where built libraries are kept (see the module docstring)."""
    if os.environ.get("WGRAPH_CACHE_DIR"):
        return Path(os.environ["WGRAPH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wgraph"


def _compiler() -> list[str]:
    if os.environ.get("CC"):
        return os.environ["CC"].split()
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise BuildError("no C compiler found (set CC, or install gcc or clang)")


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = [line for line in text.splitlines() if line.split(":")[0].strip() in ("model name", "flags", "Features")]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.processor() or platform.machine()


def build(directory: Path | None = None) -> Path:
    """Compile ``native.c`` (or find it already built) and return the shared library's path.

    Raises :class:`BuildError` with the compiler's message if no flag set builds.
    """
    cc = _compiler()
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run the C compiler {' '.join(cc)!r}: {e}") from None
    directory = Path(directory or cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        parts = [source, " ".join(cc), version, " ".join((*flags, *_COMMON)), _cpu_id(), platform.machine()]
        key = hashlib.sha256(b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()[:20]
        target = directory / f"native-{key}.so"
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        cmd = [*cc, *flags, *_COMMON, str(SOURCE), "-o", tmp, "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            res = subprocess.CompletedProcess(cmd, 1, "", str(e))
        if res.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent builders leave one complete file
            return target
        os.unlink(tmp)
        errors.append((cmd, res.stderr.strip()))
    last = errors[-1][1].splitlines()
    lines = [line for line in last if "error" in line.lower()] or last or ["?"]
    details = "\n\n".join(f"{' '.join(cmd)}\n{err}" for cmd, err in errors)
    raise BuildError(f"the C compiler {' '.join(cc)!r} could not build {SOURCE.name}: {lines[0].strip()}\n\n{details}")


def _load() -> ctypes.CDLL | None:
    """The loaded library, building it first if needed; ``None`` (with one warning) if that fails."""
    global _lib
    if _lib is not None or _failed:
        return _lib
    with _lock:
        if _lib is not None or _failed:
            return _lib
        try:
            lib = ctypes.CDLL(str(build()))
            if lib.wg_abi_version() != ABI_VERSION or lib.wg_lanes() != LANES:
                raise BuildError(f"stale library: ABI {lib.wg_abi_version()}, expected {ABI_VERSION}")
        except (BuildError, OSError) as e:
            _failed.append(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            warnings.warn(
                f"wgraph: the native fused message-passing kernels are unavailable ({_failed[0]}); the fused "
                "backend uses its eager tiles (slower, same results). Set WGRAPH_NATIVE=0 to skip building them.",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        P, I, N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        for suffix, S in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            fwd, bwd = getattr(lib, f"wg_forward_{suffix}"), getattr(lib, f"wg_backward_{suffix}")
            fwd.argtypes = [P, I, I, P, I, I, P, P, P, I, I, I, I, I, N, S, N, N]
            bwd.argtypes = [P, I, I, P, I, I, P, P, P, I, I, P, P, P, P, I, I, I, I, I, I, N, S, N, N]
            fwd.restype = bwd.restype = N
        lib.wg_act_known.argtypes, lib.wg_act_known.restype = [N], N
        _lib = lib
        return lib


def unusable(dtype: torch.dtype | None, device: torch.device | None, act: str | None = None) -> str | None:
    """Why a dense block of this dtype, device and activation does not run natively, or ``None``
    when it does (CPU, float32 / float64, the library builds and ``native.c`` implements ``act``;
    the first call that gets that far builds the library)."""
    if not ENABLED:
        return "WGRAPH_NATIVE=0"
    if device is None or device.type != "cpu":
        return "tensors not all on the CPU"
    if dtype not in _SUFFIX:
        return f"{dtype}, not float32 / float64"
    if _failed or _load() is None:
        return f"the library did not build ({_failed[0]})"
    if act is not None and not _lib.wg_act_known(act_code(act)):
        return f"native.c does not implement the activation {act!r}"
    return None


def usable(edge: torch.Tensor, act: str | None = None) -> bool:
    """Whether a dense block with these edge features (and activation ``act``) runs natively: see
    :func:`unusable`."""
    return unusable(edge.dtype, edge.device, act) is None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` (B, n, H) with contiguous channels (any network and row strides)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _strided(t: torch.Tensor) -> tuple[int, int, int]:
    """A ``(B, n, H)`` tensor as ``native.c`` takes it: pointer, network stride, row stride."""
    return _ptr(t), t.stride(0), t.stride(1)


def _check(rc: int, what: str) -> None:
    if rc == 2:
        raise ValueError(f"wgraph native {what} kernel: channels not a multiple of {LANES} (not padded)")
    if rc != 0:
        raise MemoryError(f"wgraph native {what} kernel: out of memory for its per-thread buffers")


def _pad(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``t`` with zero channels appended up to ``channels`` (itself if it has them)."""
    return t if t.shape[-1] == channels else F.pad(t, (0, channels - t.shape[-1]))


def _unpad(t: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    return t if t is None or t.shape[-1] == channels else t[..., :channels].contiguous()


def _operands(send, recv, edge, weight, reverse: bool):
    """``(p, q, x, c, H, Hp)`` as ``native.c`` reads them: row and column states (senders and
    receivers in the block's order), edges and lift, channels padded from ``H`` to ``Hp``."""
    p, q = (recv, send) if not reverse else (send, recv)
    H = weight.shape[1]
    Hp = -(-H // LANES) * LANES
    p, q = _rows(_pad(p.detach(), Hp)), _rows(_pad(q.detach(), Hp))
    x, c = edge.detach().contiguous(), _pad(weight.detach(), Hp).contiguous()
    return p, q, x, c, H, Hp


def forward(send, recv, edge, weight, reverse: bool, act: str, scale: float = 1.0) -> torch.Tensor:
    """Per-receiver sum of ``phi(z)`` over a dense block, times ``scale``: ``(B, n_recv, H)``."""
    p, q, x, c, H, Hp = _operands(send, recv, edge, weight, reverse)
    B, R, C, K = x.shape
    out = torch.zeros(B, C if reverse else R, Hp, dtype=x.dtype)
    fn = getattr(_lib, f"wg_forward_{_SUFFIX[x.dtype]}")
    sizes = (B, R, C, K, Hp)
    rc = fn(*_strided(p), *_strided(q), _ptr(x), _ptr(c), _ptr(out), *sizes, act_code(act), scale, int(reverse),
            torch.get_num_threads())
    _check(rc, "forward")
    return _unpad(out, H)


def backward(send, recv, edge, weight, grad, reverse: bool, act: str, need: tuple[bool, ...], scale: float = 1.0):
    """Gradients ``(send, recv, edge, weight)`` of :func:`forward` (with the same ``scale``) for the
    receivers' gradient ``grad``, ``None`` where ``need`` says not needed."""
    need_s, need_r, need_e, need_w = need
    need_p, need_q = (need_r, need_s) if not reverse else (need_s, need_r)
    p, q, x, c, H, Hp = _operands(send, recv, edge, weight, reverse)
    g = _rows(_pad(grad, Hp))
    B, R, C, K = x.shape
    gp = torch.zeros(B, R, Hp, dtype=x.dtype) if need_p else None
    gq = torch.zeros(B, C, Hp, dtype=x.dtype) if need_q else None
    gc = torch.zeros(K, Hp, dtype=x.dtype) if need_w else None
    gx = torch.zeros(B, R, C, K, dtype=x.dtype) if need_e else None
    fn = getattr(_lib, f"wg_backward_{_SUFFIX[x.dtype]}")
    grads, sizes = (_ptr(gp), _ptr(gq), _ptr(gc), _ptr(gx)), (B, R, C, K, H, Hp)
    rc = fn(*_strided(p), *_strided(q), _ptr(x), _ptr(c), *_strided(g), *grads, *sizes, act_code(act), scale,
            int(reverse), torch.get_num_threads())
    _check(rc, "backward")
    g_send, g_recv = (_unpad(gq, H), _unpad(gp, H)) if not reverse else (_unpad(gp, H), _unpad(gq, H))
    return g_send, g_recv, gx, _unpad(gc, H)


__all__ = ["ENABLED", "BuildError", "build", "cache_dir", "usable", "unusable", "forward", "backward"]
