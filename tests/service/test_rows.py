"""The one file reader (rnnserve.service.core.rows) on text as people send it: every line-ending convention,
long quoted CSV fields, byte-order marks and declared charsets, in chunks cut anywhere; and the same files
through /score and through training's readers."""

import codecs
import csv
import gzip
import io
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnserve.service.core.package import read_package, seal
from rnnserve.service.core.rows import RowReader, read_file
from rnnserve.service.core.tokenizer import TokenizerSpec
from rnnserve.training.data import read_text_file
from rnnserve.training.lm import read_corpus

ENDINGS = ["\n", "\r\n", "\r", "\r\r\n"]
# Typographic and other non-ASCII characters people's texts hold, beside ASCII and the CSV's own syntax.
CHARS = st.one_of(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                  st.sampled_from(list("’‘“”–—\u00a0\u2009\u3000ｆｕｌｌ\u0301é,\"")))
TEXTS = st.lists(st.text(CHARS, max_size=40), min_size=1, max_size=12)


def read(data: bytes, fmt: str, cuts: list[int] = (), **kw) -> list:
    reader = RowReader(fmt, **kw)
    rows, start = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        rows += reader.feed(data[start:cut])
        start = cut
    return rows + reader.close()


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=TEXTS, endings=st.lists(st.sampled_from(ENDINGS), min_size=12, max_size=12),
       cuts=st.lists(st.integers(0, 2000), max_size=6), last=st.booleans())
def test_any_line_endings_in_any_chunks_give_the_texts_themselves(texts, endings, cuts, last):
    # Plain text: one text per line (a text cannot hold a line break there).
    lines = [one_line(t) for t in texts]
    # A lone CR, an empty line, then LF reads as one CRLF (or CRCRLF): an ambiguity of mixed files, not a loss.
    ends = ["\n" if e == "\r" and i + 1 < len(lines) and not lines[i + 1] else e for i, e in enumerate(endings)]
    data = "".join(t + e for t, e in zip(lines, ends))
    if not last and lines[-1]:  # (an empty last line needs its ending to be a line)
        data = data.removesuffix(ends[len(lines) - 1])
    assert [r.text for r in read(data.encode(), "text", cuts)] == lines
    # JSON Lines: breaks inside a text are escaped.
    data = "".join(json.dumps({"id": i, "text": t}) + e for i, (t, e) in enumerate(zip(texts, endings)))
    rows = read(data.encode(), "jsonl", cuts)
    assert [(r.id, r.text) for r in rows] == [(str(i), t) for i, t in enumerate(texts)]
    # CSV: a quoted field keeps its line breaks as written; records end in any convention.
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text"])
    head = out.getvalue()
    records = []
    for i, t in enumerate(texts):
        out = io.StringIO()  # "\r\n" as the writer's terminator, so it quotes fields holding either
        csv.writer(out, lineterminator="\r\n").writerow([f"r{i}", t])
        records.append(out.getvalue().removesuffix("\r\n"))
    data = head + "".join(r + e for r, e in zip(records, endings))
    rows = read(data.encode(), "csv", cuts)
    assert [(r.id, r.text, r.error) for r in rows] == [(f"r{i}", t, None) for i, t in enumerate(texts)]


def test_doubled_cr_drops_no_word_and_leaves_no_cr():
    data = b"a wonderful film\r\r\nawful\r\r\n"
    assert [r.text for r in read(data, "text")] == ["a wonderful film", "awful"]
    assert [r.text for r in read(b"text\r\r\n" + data, "csv")] == ["a wonderful film", "awful"]


def test_a_quoted_field_of_many_lines_is_one_row():
    body = "\n".join(f"line {i} of a long e-mail, with commas" for i in range(200))
    data = f'id,text\n1,"{body}"\n2,short\n'.encode()
    rows = read(data, "csv", cuts=[100, 5000])
    assert [(r.id, r.text, r.error) for r in rows] == [("1", body, None), ("2", "short", None)]
    one_column = f'text\n"{body}"\nshort\n'.encode()
    assert [r.text for r in read(one_column, "csv")] == [body, "short"]


def test_a_quoted_field_is_bounded_by_bytes_not_lines():
    reader_limit = RowReader("csv", max_chars=1000).max_line_bytes
    data = b'id,text\n1,"' + b"word\n" * (reader_limit // 5 + 10) + b'"\n2,after\n'
    rows = read(data, "csv", max_chars=1000)
    assert rows[0].error == "a quoted field opens here and never closes"
    assert rows[-1].text == "after" and rows[-1].id == "2"


def test_a_declared_charset_is_read_and_a_bad_byte_is_one_error_row():
    data = "text\nI didn\u2019t like it\n".encode("cp1252") + b"\x81bad\n" + b"fine\n"
    rows = read(data, "csv", encoding="cp1252")
    assert [(r.text, r.error) for r in rows] == [("I didn\u2019t like it", None), (None, "invalid cp1252"),
                                                ("fine", None)]
    utf16 = "text\r\nI didn\u2019t like it\r\n".encode("utf-16-le")
    assert [r.text for r in read(utf16, "csv", encoding="utf-16-le")] == ["I didn\u2019t like it"]


def test_error_rows_carry_no_made_up_id():
    rows = read(b'{"id": 7, "text": "a"}\nnot json\n{"id": "x", "text": "b"}\n', "jsonl")
    assert [(r.number, r.id) for r in rows] == [(1, "7"), (2, None), (3, "x")]
    rows = read(b"text\nplain\n", "csv")
    assert rows[0].id is None


def test_training_reads_excel_csv_and_jsonl_with_byte_order_marks(tmp_path):
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_bytes(codecs.BOM_UTF8 + "review,label\r\ngreat,pos\r\n\u201cawful\u201d,neg\r\n".encode())
    assert read_text_file(csv_file, "review", "label") == (["great", "\u201cawful\u201d"], ["pos", "neg"])
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + b'{"text": "great", "label": 1}\r\n{"text": "bad", "label": 0}\r\n')
    assert read_text_file(jsonl) == (["great", "bad"], ["1", "0"])
    utf16 = tmp_path / "utf16.csv.gz"
    utf16.write_bytes(gzip.compress("text,label\r\nfine,a\r\n".encode("utf-16")))
    assert read_text_file(utf16) == (["fine"], ["a"])


def test_training_reads_a_text_past_the_csv_modules_default_field_limit(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters; Python's csv stops at 131,072 by default
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long_text}",a\nshort,b\n')
    texts, labels = read_text_file(path)
    assert texts == [long_text, "short"] and labels == ["a", "b"]


def test_a_corpus_reads_the_same_whatever_its_bom_and_line_endings(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"Oil prices rose.\nShares fell.\n")
    windows = tmp_path / "windows.txt"
    windows.write_bytes(codecs.BOM_UTF8 + b"Oil prices rose.\r\nShares fell.\r\n")
    assert read_corpus(plain) == read_corpus(windows) == "Oil prices rose.\nShares fell."


def test_read_file_sees_gzip_by_its_bytes(tmp_path):
    path = tmp_path / "texts.txt"  # no .gz suffix, gzip inside
    path.write_bytes(gzip.compress(b"one\r\ntwo\r\n"))
    assert [r.text for r in read_file(path, "text")] == ["one", "two"]


@pytest.mark.parametrize("ending", ENDINGS)
def test_score_gives_what_predict_gives_for_every_line_ending(api, ending):
    texts = ["a wonderful film", "dull and far too long", "I didn\u2019t like it"]
    expected = [p["score"] for p in api.post("/v1/models/sentiment-lstm/predict",
                                             json={"texts": texts}).json()["predictions"]]
    bodies = {"text/plain": ending.join(texts) + ending,
              "text/csv": "id,text" + ending + ending.join(f"{i},{t}" for i, t in enumerate(texts)) + ending,
              "application/x-ndjson": ending.join(json.dumps({"text": t}) for t in texts) + ending}
    for content_type, body in bodies.items():
        r = api.post("/v1/models/sentiment-lstm/score", content=body.encode(),
                     headers={"content-type": content_type})
        rows = [json.loads(line) for line in r.text.splitlines()][:-1]
        assert [row["score"] for row in rows] == expected, (content_type, rows)


def test_score_honours_a_declared_charset_and_refuses_an_unknown_one(api):
    body = "text\nI didn\u2019t like it\n".encode("cp1252")
    expected = api.post("/v1/models/sentiment-lstm/predict", json={"text": "I didn\u2019t like it"}).json()
    r = api.post("/v1/models/sentiment-lstm/score", content=body,
                 headers={"content-type": "text/csv; charset=windows-1252"})
    row = json.loads(r.text.splitlines()[0])
    assert row["score"] == expected["predictions"][0]["score"] and "error" not in row
    r = api.post("/v1/models/sentiment-lstm/score", files={"file": ("a.csv", body, "text/csv; charset=cp1252")})
    assert json.loads(r.text.splitlines()[0])["score"] == row["score"]
    r = api.post("/v1/models/sentiment-lstm/score", content=body, headers={"content-type": "text/csv; charset=klingon"})
    assert r.status_code == 415 and "charset 'klingon' is unknown" in r.json()["error"]["message"]


def test_settings_and_package_files_read_the_same_with_a_byte_order_mark(tmp_path, model_repo):
    from rnnserve.service.settings import Settings

    keys = tmp_path / "keys.txt"
    keys.write_bytes(codecs.BOM_UTF8 + b"first-key\r\n# a comment\r\nsecond-key\r\n")
    assert Settings(api_keys_file=keys).keys() == ["first-key", "second-key"]
    package = tmp_path / "sentiment-lstm" / "1"
    shutil.copytree(model_repo / "sentiment-lstm" / "1", package)
    for name in ("metadata.json", "tokenizer.json"):
        (package / name).write_bytes(codecs.BOM_UTF8 + (package / name).read_bytes())
    seal(package)
    assert read_package(package).metadata.name == "sentiment-lstm"
    TokenizerSpec.load(package / "tokenizer.json")


def test_the_file_end_and_the_first_bytes_read_the_same_in_any_chunks():
    for data, rows in ((b"a\rb\r\r", ["a", "b", ""]), (b"a\nb\n\n", ["a", "b", ""]), (b"\r\r\r", ["", "", ""])):
        assert [r.text for r in read(data, "text")] == rows
    utf8 = codecs.BOM_UTF8 + b"text\nfine\n"
    utf16 = "text\r\nfine\r\n".encode("utf-16")
    for data in (utf8, utf16):
        for cut in range(1, 5):
            assert [(r.text, r.error) for r in read(data, "csv", [cut, cut + 1])] == [("fine", None)], (data, cut)


def test_charsets_that_are_no_text_encodings_are_refused_and_undecodable_input_ends_the_stream(api):
    from rnnserve.service.core.errors import UnsupportedMediaType
    from rnnserve.service.core.rows import codec_for

    for name in ("rot13", "base64", "zlib", "hex", "undefined"):
        with pytest.raises(UnsupportedMediaType):
            codec_for(name)
    r = api.post("/v1/models/sentiment-lstm/score", content=b"text\nfine\n",
                 headers={"content-type": "text/csv; charset=rot13"})
    assert r.status_code == 415
    # UTF-16 declared, no byte-order mark and an odd length: the stream ends with the reason, not cut
    r = api.post("/v1/models/sentiment-lstm/score", content="text\nfine\n".encode("utf-16-le") + b"x",
                 headers={"content-type": "text/csv; charset=utf-16"})
    assert r.status_code == 200 and json.loads(r.text.splitlines()[-1]).keys() <= {"error", "summary"}


def test_a_gzip_upload_split_inside_its_magic_is_still_gzip(api):
    body = gzip.compress(b"text\na wonderful film\nawful\n")

    def chunks():
        yield body[:1]
        yield body[1:]

    r = api.post("/v1/models/sentiment-lstm/score", content=chunks(), headers={"content-type": "text/csv"})
    assert [("error" in json.loads(line)) for line in r.text.splitlines()[:-1]] == [False, False]
