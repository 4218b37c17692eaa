from course_lib.metrics import classification_metrics, majority_baseline


def test_metrics_on_known_predictions():
    # 4 of 6 right; class 1: precision 2/3, recall 2/3; class 0: precision 2/3, recall 2/3.
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 1, 0]
    m = classification_metrics(y_true, y_pred, num_labels=2)
    assert m["accuracy"] == 4 / 6
    assert abs(m["precision"] - 2 / 3) < 1e-9
    assert abs(m["recall"] - 2 / 3) < 1e-9
    assert abs(m["f1"] - 2 / 3) < 1e-9
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]


def test_confusion_matrix_keeps_absent_classes():
    m = classification_metrics([0, 0], [0, 0], num_labels=3)
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_majority_baseline_uses_training_majority():
    base = majority_baseline(train_labels=[1, 1, 0], eval_labels=[0, 1, 1, 1])
    assert base["label"] == 1
    assert base["accuracy"] == 0.75
    # Always answering one class gives F1 0 for the other: macro F1 is low.
    assert base["f1"] < 0.5


def test_grouped_interval_is_wider_when_groups_agree_within():
    from course_lib.metrics import grouped_bootstrap_interval

    correct = [True] * 80 + [False] * 20
    independent = grouped_bootstrap_interval(correct, list(range(100)))
    clustered = grouped_bootstrap_interval(correct, [i // 10 for i in range(100)])  # 10 movies
    assert independent[0] < 0.8 < independent[1]
    assert clustered[1] - clustered[0] > independent[1] - independent[0]
