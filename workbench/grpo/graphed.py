"""The fused sampler's decode step: one token per sequence through the decoder and the output layer. On a CPU it
attends over the cache slots written so far (in one native call where `cpu_kernels` runs: bf16 on AVX512-BF16); on
a GPU it runs at fixed shapes, captured as a CUDA graph once per `sample()` call and replayed for every token after
that.

Why: on a GPU, a decode step of a small model is bound by kernel launches, not by the GPU's work: about 20 kernels
per layer (30 layers in SmolLM2-135M) for 8 rows, each launch costing more than what it computes. Measured on an
H200 without graphs: 12–66 ms per token, where streaming the weights once takes 0.07 ms. A graph replays the whole
step with one launch. Why by hand rather than `torch.compile(mode="reduce-overhead")`: compiling costs tens of
seconds on first use and again for each new prompt length, while a capture costs about one step.

A graph replays fixed kernels on fixed memory, so the step reads the token, its position and its cache slot from
device tensors and attends over the whole preallocated KV cache (slots not yet written are zeros and masked out).
On a CPU the same fixed-shape step runs eagerly when asked (`FusedLlamaSampler.static_decode`): that is how the tests
hold it to the sliced step that CPU runs use.

    step = DecodeStep(sampler, cos, sin, next_pos, first_slot, key_ok, cache_k, cache_v, fixed=True, graph=True)
    logits = step(tok)    # writes tok's K/V at the next slot, returns the next logits (B, V); one replay each call
"""

from __future__ import annotations

import logging

import torch

from .cpu_kernels import NativeDecode

log = logging.getLogger(__name__)


class DecodeStep:
    """One token per sequence through the decoder and the output layer. `fixed`: the slot in a device tensor and the
    whole cache attended (what a graph can replay); else the slot is an int and only the written slots are attended.
    With `graph` (CUDA, fixed shapes): the first call runs eagerly on a side stream (kernels pick their algorithms
    and workspaces outside the capture), the second captures the step and replays it, later calls replay."""

    def __init__(
        self, sampler, cos, sin, next_pos, slot: int, key_ok, cache_k, cache_v, fixed: bool, graph: bool
    ):
        self.sampler, self.cos, self.sin = sampler, cos, sin
        self.key_ok, self.cache_k, self.cache_v = key_ok, cache_k, cache_v
        self.tok = torch.zeros_like(next_pos)  # (B,) the token to feed
        self.pos = next_pos.clone()  # (B,) its position
        # its cache slot
        self.slot = torch.full((1,), slot, dtype=torch.long, device=next_pos.device) if fixed else slot
        self.fixed, self.graph = fixed, graph and fixed
        self.calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._out: torch.Tensor | None = None
        native = sampler.weights.native and not fixed  # the weights are in the native kernel's panels
        self.native = NativeDecode(sampler, cos, sin, key_ok, cache_k, cache_v) if native else None

    def _body(self) -> torch.Tensor:
        s = self.sampler
        if self.fixed:
            self.key_ok.index_fill_(1, self.slot, True)
        else:
            self.key_ok[:, self.slot] = True
        if self.native is not None:  # the whole step in one native call (`cpu_kernels`)
            logits = self.native(self.tok, self.pos, self.slot)
        else:
            cos, sin = self.cos[self.pos][:, None], self.sin[self.pos][:, None]
            hidden = s._decode(self.tok, cos, sin, self.slot, self.key_ok, self.cache_k, self.cache_v)
            logits = s.logits(hidden)
        self.pos.add_(1)
        self.slot += 1  # in place for the device tensor a graph reads; a new int otherwise
        return logits

    def __call__(self, tok: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) after feeding `tok` (B,); valid until the next call."""
        self.calls += 1
        if not self.graph:
            self.tok = tok
            return self._body()
        self.tok.copy_(tok)  # a graph reads its input from the same memory every time
        if self.calls == 1:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._body()
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self._graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._out = self._body()
                self._graph = graph
            except RuntimeError as e:  # nothing ran during the capture: run this step eagerly, and the rest
                log.warning("CUDA graph capture of the decode step failed (%s): decoding without graphs", e)
                self.graph = self.sampler.graphs = False
                torch.cuda.synchronize()
                return self._body()
        self._graph.replay()
        return self._out
