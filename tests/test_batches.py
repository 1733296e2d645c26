"""`lgm.data.InMemoryBatches`: the data order is a function of (seed, epoch), resumable mid-epoch, sharded per rank."""

import pytest
import torch

from lgm.data import InMemoryBatches, modules


def epoch(loader: InMemoryBatches, e: int) -> list[torch.Tensor]:
    loader.set_epoch(e)
    return list(loader)


def test_order_depends_on_seed_and_epoch_only():
    data = torch.arange(100)
    a, b = (
        InMemoryBatches(data, batch_size=8, shuffle=True, seed=1),
        InMemoryBatches(data, batch_size=8, shuffle=True, seed=1),
    )
    assert len(a) == 12  # the incomplete last batch is dropped
    first, second = epoch(a, 0), epoch(a, 1)
    assert torch.equal(torch.cat(epoch(b, 1)), torch.cat(second))  # b skipped epoch 0: same epoch-1 order
    assert not torch.equal(torch.cat(first), torch.cat(second))
    assert len(set(torch.cat(first).tolist())) == 96
    other_seed = epoch(InMemoryBatches(data, batch_size=8, shuffle=True, seed=2), 0)
    assert not torch.equal(torch.cat(first), torch.cat(other_seed))


def test_evaluation_order_keeps_every_sample():
    data = torch.arange(10)
    batches = list(InMemoryBatches(data, batch_size=4, shuffle=False))
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_resume_mid_epoch_continues_with_the_next_batch():
    x, y = torch.arange(50), torch.arange(50) * 10
    loader = InMemoryBatches(x, y, batch_size=5, shuffle=True, seed=0)
    loader.set_epoch(3)
    full = list(loader)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 4, "seed": 0}

    resumed = InMemoryBatches(x, y, batch_size=5, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # Lightning sets the epoch again after loading: the position is kept
    rest = list(resumed)
    assert len(rest) == 6 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, full[4:]))
    resumed.set_epoch(4)
    assert len(list(resumed)) == 10  # the next epoch is whole again


def test_resume_with_another_seed_is_refused():
    loader = InMemoryBatches(torch.arange(10), batch_size=2, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="same --data.init_args.seed"):
        InMemoryBatches(torch.arange(10), batch_size=2, shuffle=True, seed=1).load_state_dict(loader.state_dict())


def test_ranks_get_disjoint_equal_shares(monkeypatch):
    data = torch.arange(70)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(modules, "_distributed_rank_and_size", lambda rank=rank: (rank, 3))
        shares.append(epoch(InMemoryBatches(data, batch_size=4, shuffle=True, seed=5), 2))
    assert [len(s) for s in shares] == [5, 5, 5]  # 17 full batches -> 15, dealt round-robin
    seen = torch.cat([torch.cat(s) for s in shares]).tolist()
    assert len(seen) == len(set(seen)) == 60

    evaluation = []
    for rank in range(3):
        monkeypatch.setattr(modules, "_distributed_rank_and_size", lambda rank=rank: (rank, 3))
        evaluation.append(list(InMemoryBatches(data, batch_size=4, shuffle=False)))
    assert sorted(torch.cat([torch.cat(s) for s in evaluation]).tolist()) == list(range(70))  # nothing dropped

    few = []
    for rank in range(3):
        monkeypatch.setattr(modules, "_distributed_rank_and_size", lambda rank=rank: (rank, 3))
        few.append(list(InMemoryBatches(torch.arange(10), batch_size=64, shuffle=False)))
    assert [[b.tolist() for b in s] for s in few] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9]]]  # one batch per rank


def test_flips_are_seeded_per_epoch():
    images = torch.arange(2 * 1 * 2 * 3).view(2, 1, 2, 3).repeat(50, 1, 1, 1)
    loader = InMemoryBatches(images, batch_size=100, shuffle=True, seed=0, hflip=True)
    again = InMemoryBatches(images, batch_size=100, shuffle=True, seed=0, hflip=True)
    assert torch.equal(epoch(loader, 1)[0], epoch(again, 1)[0])
    assert not torch.equal(epoch(loader, 1)[0], epoch(loader, 2)[0])
