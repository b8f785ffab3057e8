"""Plain helper functions shared by several test modules (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread (restored after): many tiny forwards on a busy 2-core machine
    run ~20x slower with two threads, each waiting on the other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def interruptible() -> None:
    """``preexec_fn`` of a child process a test interrupts (SIGINT): the signal at its
    default and unblocked there. A child inherits an ignored or blocked SIGINT from the
    test process, where a library may have left it so (the suite saw a child that ran to
    the end, exit 0, through its SIGINT); Python installs its KeyboardInterrupt handler
    only over the default."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A loopback TCP port no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layer_norm_unembed(x: np.ndarray, bridge: Any, softmax: bool = False) -> np.ndarray:
    """Independent: the final LayerNorm and the unembedding written out in float64 numpy;
    the logits, or with ``softmax`` the probabilities."""
    w, b = bridge.ln_final.w.detach().double().numpy(), bridge.ln_final.b.detach().double().numpy()
    x = x.astype(np.float64)
    xn = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + bridge.cfg.eps)
    logits = (
        xn * w + b
    ) @ bridge.W_U.detach().double().numpy() + bridge.b_U.detach().double().numpy()
    if not softmax:
        return logits
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def one_line_error(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    match: str | None = None,
    *,
    prefix: bool = True,
    clear: bool = False,
) -> str:
    """Run the CLI on ``argv``: exit status 2 and one line on stderr (starting
    ``actstore: error: `` when ``prefix``; matching the regex ``match`` when given), which is
    returned. ``clear`` drops what was captured before the run."""
    from actstore.cli import main

    if clear:
        capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not prefix or err.startswith("actstore: error: "), err
    assert match is None or re.search(match, err), err
    return err


@contextlib.contextmanager
def no_prefix(model: Any, layers: Any, prefix: Any) -> Iterator[None]:
    """In place of the engine's attention_prefix: the earlier positions' keys and values
    never reach the attentions."""
    yield
