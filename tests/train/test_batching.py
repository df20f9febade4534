from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.train.batching import batches_per_epoch, micro_batch_rows


def epoch_batches(num_rows, batch_size, seed, epoch):
    per_epoch = batches_per_epoch(num_rows, batch_size)
    return [
        micro_batch_rows(num_rows, batch_size, seed, epoch * per_epoch + k)
        for k in range(per_epoch)
    ]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 16), st.integers(0, 1000), st.integers(0, 3))
def test_every_row_exactly_once_per_epoch(num_rows, batch_size, seed, epoch):
    batches = epoch_batches(num_rows, batch_size, seed, epoch)
    rows = [row for batch in batches for row in batch]
    assert sorted(rows) == list(range(num_rows))
    assert all(len(batch) == batch_size for batch in batches[:-1])


def test_last_batch_is_smaller():
    batches = epoch_batches(10, 4, seed=0, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches_per_epoch(10, 4) == 3 and batches_per_epoch(8, 4) == 2


def test_deterministic_for_a_seed():
    assert epoch_batches(50, 8, seed=3, epoch=0) == epoch_batches(50, 8, seed=3, epoch=0)
    assert micro_batch_rows(50, 8, 3, 17) == micro_batch_rows(50, 8, 3, 17)


def test_seeds_and_epochs_give_different_orders():
    first = epoch_batches(50, 8, seed=3, epoch=0)
    assert epoch_batches(50, 8, seed=3, epoch=1) != first
    assert epoch_batches(50, 8, seed=4, epoch=0) != first
    # not simply the identity order either
    assert [row for batch in first for row in batch] != list(range(50))


def test_stream_rows_always_gives_count_rows_and_walks_whole_epochs():
    from rlhfkit.train.batching import stream_rows

    steps = [stream_rows(10, 4, seed=3, index=k) for k in range(5)]  # 20 rows = 2 epochs of 10
    assert all(len(rows) == 4 for rows in steps)
    flat = [row for rows in steps for row in rows]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch is a fresh permutation
    assert stream_rows(10, 4, seed=3, index=2) == steps[2]  # a pure function of (seed, index)
    # naive form: the whole stream, then slice
    import torch

    stream = [
        i
        for epoch in range(2)
        for i in torch.randperm(
            10, generator=torch.Generator().manual_seed(3 * 100_003 + epoch)
        ).tolist()
    ]
    assert flat == stream


def test_file_order_takes_consecutive_rows_and_wraps():
    assert micro_batch_rows(5, 2, seed=0, micro_index=0, shuffle=False) == [0, 1]
    assert micro_batch_rows(5, 2, seed=0, micro_index=2, shuffle=False) == [
        4,
        0,
    ]  # wraps past the end
    assert micro_batch_rows(5, 2, seed=9, micro_index=3, shuffle=False) == [
        1,
        2,
    ]  # the seed plays no part


def test_policy_prompts_in_file_order_when_not_shuffled(tiny_model_dir, tmp_path):
    from rlhfkit.runtime.rundir import prepare_run_dir
    from rlhfkit.train.grpo import GRPOConfig
    from rlhfkit.train.policy_run import PolicyRun

    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        task="arith",
        train_prompts=10,
        eval_prompts=2,
        shuffle=False,
        progress=False,
        tensorboard=False,
    )
    run = PolicyRun(
        cfg,
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False),
        resume=False,
        needs_reference=False,
        stage="grpo",
    )
    pool = run.prompts.train
    assert run.prompts_for_step(0, 4) == pool[:4] and run.prompts_for_step(1, 4) == pool[4:8]
    assert run.prompts_for_step(2, 4) == pool[8:] + pool[: 12 - len(pool)]  # wraps to the start
