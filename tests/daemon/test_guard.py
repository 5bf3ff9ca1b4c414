from edgeproxy.daemon.guard import evaluate

OLD = {"a", "b", "c", "d"}


def test_small_change_passes():
    assert not evaluate(OLD, {"a", "b", "c"}, 0.5).hold


def test_mass_removal_held_then_confirmed():
    decision = evaluate(OLD, {"a"}, 0.5)
    assert decision.hold and decision.removed == 3 and "3 of 4" in decision.reason
    assert not evaluate(OLD, {"a"}, 0.5, confirmed=True).hold


def test_root_missing_or_empty_held():
    assert evaluate(OLD, set(), 0.5, root_error="no such directory").hold
    assert evaluate(OLD, OLD, 0.5, file_count=0).hold


def test_nothing_served_nothing_to_guard():
    assert not evaluate(set(), set(), 0.5, root_error="missing").hold


def test_ratio_one_disables_ratio_check():
    assert not evaluate(OLD, set(), 1.0, file_count=3).hold
