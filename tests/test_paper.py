"""The paper's numbers as transcribed (rank1lib/paper_numbers.yaml), checked against statements the paper
makes about them in its text, so a typo in the file that contradicts the paper fails here."""
from rank1lib import paper

CONTINUAL = ("diag", "rank1", "gd", "diag-gd", "rank1-gd")


def test_table1_rank1_with_distillation_is_best_on_every_dataset():
    """Section 5.1: rank-1 EWC with distillation has the lowest A-FID among the continual methods on all four
    datasets, and the non-continual model is an upper bound on quality (lower A-FID than every method)."""
    for ds, t in paper.TABLE1.items():
        assert min(CONTINUAL, key=lambda m: t[m][0]) == "rank1-gd", ds
        assert all(t["joint"][0] < t[m][0] for m in CONTINUAL), ds
        assert t["joint"][2] is None and all(t[m][2] is not None for m in CONTINUAL), ds


def test_table5_rank1_is_table1s_rank1_with_distillation():
    """Table 5's k = 1 row is the same run as Table 1's rank-1 + GD row (CIFAR-10 and FMNIST)."""
    for ds, t in paper.TABLE5.items():
        assert t[1] == paper.TABLE1[ds]["rank1-gd"], ds


def test_table6_and_table3_shapes():
    assert set(paper.TABLE6) == {"MNIST", "FMNIST", "CIFAR-10", "ImageNet-1k"}
    assert all(len(v) == 2 and v[0] > v[1] > 0 for v in paper.TABLE6.values())
    assert all(h > 0 for h in paper.TABLE3.values()) and ("MNIST", "rank1-gd") in paper.TABLE3
    assert paper.APPENDIX_C["VAE, MSE + KL"] < paper.APPENDIX_C["VAE, MSE + 1e-3 KL"] < paper.APPENDIX_C["DDPM, late t"]


def test_figure3_smallest_ratio_is_below_the_bound_at_t100():
    """Section 3.2: r_t is smallest (0.022 at t = 700) and already below 0.4 at t = 100; the transcribed rows
    must say the same (the smallest ratio lies under the t = 100 bound, at a later t)."""
    import re
    rows = dict(paper.FIGURE3)
    r_min, t_min = map(float, re.match(r"([\d.]+), at t = (\d+)", rows["smallest r_t = lambda2/lambda1"]).groups())
    bound = float(re.match(r"< ([\d.]+)", rows["r_t at t = 100"]).group(1))
    assert r_min < bound and t_min > 100
    assert list(paper.figure3_table().index) == [q for q, _ in paper.FIGURE3]
