"""The pure functions over a comparison's runs (rvq_cli.compare.results): the best marks and the
notes on missing or non-finite values, on hand-made runs (no training)."""

from pathlib import Path


def test_best_rule_on_separated_runs():
    """Runs whose seeds separate clearly get a best mark; one seed never does."""
    from rvq_cli.compare.results import EstimatorRun, best_values

    def run(name, seed, qerr):
        return EstimatorRun(name, seed, Path(name), "trained", {"quant_error": qerr}, {}, "0" * 16, "1" * 16)

    sep = [run("ste", s, 1.0 + 0.01 * s) for s in range(3)] + [run("rotation", s, 0.5 + 0.02 * s) for s in range(3)]
    assert best_values(sep, ["ste", "rotation"], [0, 1, 2])["train.quant_error"] == ["rotation"]
    noisy = [run("ste", s, [1.0, 0.2, 0.9][s]) for s in range(3)] + [run("rotation", s, [0.5, 0.6, 0.4][s])
                                                                     for s in range(3)]
    assert "train.quant_error" not in best_values(noisy, ["ste", "rotation"], [0, 1, 2])
    assert best_values(sep[:1] + sep[3:4], ["ste", "rotation"], [0]) == {}


def test_partly_missing_and_non_finite_values_are_noted_and_never_best():
    from rvq_cli.compare.results import EstimatorRun, best_values, missing_values

    def run(name, seed, qerr):
        return EstimatorRun(name, seed, Path(name), "trained", {} if qerr is None else {"quant_error": qerr}, {},
                            "0" * 16, "1" * 16)

    runs = ([run("ste", s, v) for s, v in enumerate([1.0, None, 1.1])] +
            [run("rotation", s, v) for s, v in enumerate([0.5, 0.6, float("nan")])])
    notes = missing_values(runs, ["ste", "rotation"], [0, 1, 2])
    assert any("ste has no value for seed(s) 1" in n for n in notes)
    assert any("rotation is not finite for seed(s) 2" in n for n in notes)
    assert "train.quant_error" not in best_values(runs, ["ste", "rotation"], [0, 1, 2])


def test_both_modes_print_one_table_shape():
    """A synthetic result's tables are plain Tables, rendered by the CLI's one path; a table's
    ``marks`` says after its title what a starred cell means."""
    from rvq_cli.cli import _rich_table
    from rvq_cli.compare.synthetic_report import SyntheticResult
    from rvq_cli.compare.tables import Cell, Table

    res = SyntheticResult("t", ["estimator", "x"], [["ste", "1.0"]], [], Path("j"), Path("f"))
    assert res.tables == [Table("t", ["estimator", "x"], [[Cell("ste"), Cell("1.0")]])]
    assert _rich_table(res.tables[0]).title == "t"
    marked = Table("mean", ["estimator"], [[Cell("ste", mark=True)]], marks="best")
    assert _rich_table(marked).title == "mean (* best)"
    assert marked.markdown()[-1] == "| **ste** |"
