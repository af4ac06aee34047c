"""Tiled VAE across two ranks (gloo on 127.0.0.1): every rank returns the one-process tiled decode.

Two spawned processes split the tiles (3 x 3 on a 24 x 24 latent canvas: 4 and 5 tiles, the rank
border runs through the middle row), gather every tile's GroupNorm statistics and canvas keys /
values at each barrier and the halos at each checkpoint, and sum their output canvases. Both
ranks' outputs are compared with the one-process tiled run (measured: the same bits on CPU) and
with the full `vae.decode` / `vae.encode`; out-of-core parking, more ranks than tiles and a
shard that does not match its group are refused before any compute."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mdtools.distributed import free_port
from mdtools.errors import ConfigError
from mdtools.vae import schedule_estimate, tiled_decode, tiled_encode
from tests.test_vae import errors, make_vae, structured_latents

LAT, TILE = 24, 64  # 3 x 3 tiles of 8 latent px


def _budget(vae) -> int:
    """A park budget that parks at some barriers only ("checkpoint")."""
    return schedule_estimate(vae, (LAT, LAT), sync_strategy="park", tile=TILE)["parked_peak_bytes"] // 3


#: name -> (mid-block attention, decode or encode, keyword arguments)
CASES = {
    "attn_park": (True, "decode", dict(sync_strategy="park")),
    "attn_auto": (True, "decode", dict()),
    "attn_checkpoint": (True, "decode", dict(park_budget_bytes="third")),
    "attn_recompute": (True, "decode", dict(sync_strategy="recompute")),
    "plain_park_blended": (False, "decode", dict(sync_strategy="park", overlap=16, halo=16)),
    "plain_circular": (False, "decode", dict(sync_strategy="park", circular="x")),
    "plain_no_sync": (False, "decode", dict(sync_groupnorm=False, overlap=16, halo=16)),
    "attn_encode": (True, "encode", dict(sync_strategy="park")),
}


def _inputs(direction: str) -> torch.Tensor:
    z = structured_latents(LAT, LAT)
    return z if direction == "decode" else torch.tanh(torch.nn.functional.interpolate(z[:, :3], scale_factor=8.0))


def run_case(name: str, shard=None, report: dict | None = None) -> torch.Tensor:
    attn, direction, kw = CASES[name]
    vae = make_vae(attention=attn)
    if kw.get("park_budget_bytes") == "third":
        kw = {**kw, "park_budget_bytes": _budget(vae)}
    fn = tiled_decode if direction == "decode" else tiled_encode
    return fn(vae, _inputs(direction), tile=TILE, report=report, shard=shard, **kw)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mdtools.distributed import Shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out_dir = Path(out)
    try:
        shard = Shard(rank, world)
        reports = {}
        for name in CASES:
            rep: dict = {}
            torch.save(run_case(name, shard, rep), out_dir / f"{name}_{rank}.pt")
            reports[name] = {k: rep[k] for k in ("world", "rank", "rank_tiles", "n_tiles", "comm_seconds",
                                                 "comm_calls", "strategy", "exact")}
        (out_dir / f"reports_{rank}.json").write_text(json.dumps(reports))
        vae, z = make_vae(attention=False), structured_latents(LAT, LAT)
        refused = []
        for kw in (dict(tile=LAT * 8), dict(tile=TILE, park="disk"), dict(tile=TILE, shard=Shard(rank, 3)),
                   dict(tile=TILE, shard=Shard(2, 2))):
            try:
                tiled_decode(vae, z, **{"shard": shard, **kw})
                refused.append(None)
            except ConfigError as e:
                refused.append(str(e))
        (out_dir / f"refused_{rank}.json").write_text(json.dumps(refused))
        dist.barrier()  # no rank hung in a collective the other skipped
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_ranks")
    mp.spawn(_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_and_full(two_ranks, name):
    attn, direction, kw = CASES[name]
    one = run_case(name)
    x = _inputs(direction)
    vae = make_vae(attention=attn)
    with torch.no_grad():
        full = vae.decode(x).sample if direction == "decode" else vae.encode(x).latent_dist.mode()
    # exact runs equal the full decode (a circular canvas has no untiled counterpart)
    exact = kw.get("sync_groupnorm", True) and "halo" not in kw and "circular" not in kw
    for rank in (0, 1):
        got = torch.load(two_ranks / f"{name}_{rank}.pt", weights_only=True)
        assert got.shape == one.shape
        assert errors(got, one)["max"] <= 1e-5, (name, rank, errors(got, one))
        if exact:  # the exact run: the full decode to float noise, across ranks too
            assert errors(got, full)["max"] <= 1e-4, (name, rank, errors(got, full))


def test_reports_name_the_world_the_tiles_and_the_communication(two_ranks):
    reps = [json.loads((two_ranks / f"reports_{r}.json").read_text()) for r in (0, 1)]
    for name in CASES:
        a, b = reps[0][name], reps[1][name]
        assert a["world"] == b["world"] == 2 and (a["rank"], b["rank"]) == (0, 1)
        n = a["n_tiles"]  # 9, or 16 with a 16 px overlap
        assert n == b["n_tiles"] == (16 if "overlap" in CASES[name][2] else 9)
        assert (a["rank_tiles"], b["rank_tiles"]) == (n // 2, n - n // 2)
        assert a["comm_calls"] > 0 and a["comm_seconds"] > 0
        assert a["strategy"] == b["strategy"]
    assert reps[0]["attn_checkpoint"]["strategy"] == "checkpoint"
    assert reps[0]["attn_recompute"]["strategy"] == "recompute"


def test_refusals_before_compute(two_ranks):
    for rank in (0, 1):
        msgs = json.loads((two_ranks / f"refused_{rank}.json").read_text())
        assert None not in msgs, msgs
        assert "2 ranks but the tiled VAE has 1 tiles" in msgs[0]
        assert "park='disk' cannot be used across ranks" in msgs[1] and "park='cpu'" in msgs[1]
        assert "does not match its process group" in msgs[2]
        assert "0 <= rank < world" in msgs[3]


def test_one_rank_shard_is_the_plain_run():
    from mdtools.distributed import Shard

    rep: dict = {}
    a = run_case("plain_park_blended", Shard(0, 1), rep)
    assert torch.equal(a, run_case("plain_park_blended"))
    assert (rep["world"], rep["rank_tiles"], rep["comm_calls"]) == (1, 16, 0)
