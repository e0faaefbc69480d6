"""The derived seeds: the formulas the stored results were computed with (changing one would silently
change every rerun), and no collisions between the streams a run uses."""
from rank1lib import seeds


def test_derived_seeds_keep_the_values_the_stored_runs_used():
    assert [seeds.task(2, k) for k in range(5)] == [2000, 2001, 2002, 2003, 2004]
    assert seeds.timestep(1, 700) == 1700 and seeds.fid_sampling(2) == 12_000 and seeds.FID_SAMPLING == 10_000
    assert [seeds.power_iteration(3, it, 2) for it in range(3)] == [3001, 3002, 3000]
    assert seeds.stream(1, 5) == 1_000_008


def test_streams_of_one_run_do_not_collide():
    """Within a run of seed s < 10: task streams (k < 5), timesteps (100..900) and FID sampling differ."""
    for s in range(10):
        tasks = {seeds.task(s, k) for k in range(5)}
        ts = {seeds.timestep(s, t) for t in range(100, 1000, 100)}
        fid = {seeds.fid_sampling(i) for i in range(3)}
        assert not (tasks & ts) and not (tasks & fid) and len(tasks) == 5
