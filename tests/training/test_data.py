"""Datasets follow keras.datasets semantics; users' files load or fail with a clear DataError."""

import pytest

from rnnserve.training.data import DataError, load_keras_dataset, load_text_dataset, read_text_file


def test_imdb_matches_published_facts(data_dir):
    ds = load_keras_dataset("imdb", data_dir, num_words=10000)
    assert (len(ds.x_train), len(ds.x_test)) == (25000, 25000)
    assert len(ds.x_train[0]) == 218 and len(ds.x_train[1]) == 189
    assert ds.x_train[0][:8] == [1, 14, 22, 16, 43, 530, 973, 1622]
    assert ds.y_train[:10].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    assert max(max(x) for x in ds.x_train) == 9999
    assert ds.labels == ["negative", "positive"]


def test_reuters_split_and_labels(data_dir):
    ds = load_keras_dataset("reuters", data_dir, num_words=10000)
    assert (len(ds.x_train), len(ds.x_test)) == (8982, 2246)
    assert ds.x_train[0][:13] == [1, 2, 2, 8, 43, 10, 447, 5, 25, 207, 270, 5, 3095]
    assert ds.num_classes == 46 and ds.labels[3] == "earn"


def test_reuters_maxlen_filter_is_strict_and_test_split_applies(data_dir):
    ds = load_keras_dataset("reuters", data_dir, num_words=30000, maxlen=50, test_split=0.3)
    assert all(len(x) < 50 for x in ds.x_train + ds.x_test)
    total = len(ds.x_train) + len(ds.x_test)
    assert len(ds.x_train) == int(total * 0.7)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_keras_dataset("imdb", tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing imdb_reconstructed.npz"):
        load_keras_dataset("imdb", tmp_path)


def test_own_csv_and_jsonl(tmp_path):
    rows = "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(20))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    ds = load_text_dataset(tmp_path / "d.csv", pad_to=10)
    assert ds.labels == ["neg", "pos"] and len(ds.x_train) == 32 and len(ds.x_test) == 8
    assert ds.tokenizer.words[:2] == ["film", "good"] or ds.tokenizer.words[0] == "film"
    (tmp_path / "d.jsonl").write_text("".join(f'{{"body": "x {i}", "y": "{i % 2}"}}\n' for i in range(10)))
    texts, labels = read_text_file(tmp_path / "d.jsonl", "body", "y")
    assert texts[1] == "x 1" and labels[1] == "1"


@pytest.mark.parametrize("content,message", [
    ("", "holds no rows"),
    ("words,label\nhello,a\n", "no column"),
    ("text,label\nhello,\n", "row 1: empty or non-text label"),
    ("text,label\nhello,a\nbye,a\n", "only one label"),
])
def test_malformed_csv_errors(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        load_text_dataset(tmp_path / "bad.csv")


def test_invalid_jsonl_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{not json\n')
    with pytest.raises(DataError, match="row 2: invalid JSON"):
        read_text_file(tmp_path / "bad.jsonl")


def test_own_files_get_the_normalization_and_keras_datasets_keras_rules(tmp_path, data_dir):
    from rnnserve.service.core.normalize import DEFAULT
    from rnnserve.training.config import ConfigError, TrainConfig

    path = tmp_path / "typed.csv"
    path.write_text("text,label\n" + "I didn\u2019t like it,neg\ngreat\u00a0fun,pos\n" * 4)
    ds = load_text_dataset(path, num_words=None, test_split=0.25)
    assert ds.tokenizer.normalization == DEFAULT
    assert set(ds.tokenizer.words) == {"i", "didn't", "like", "it", "great", "fun"}
    assert load_text_dataset(path, test_split=0.5, normalization=[]).tokenizer.normalization == []
    assert load_keras_dataset("reuters", data_dir).tokenizer.normalization == []
    assert TrainConfig(normalization="quotes,spaces").normalization_rules() == ["quotes", "spaces"]
    with pytest.raises(ConfigError, match="unknown or repeated normalization rules"):
        TrainConfig(normalization="quotes,smart").validate()
