"""CodeGeeX tokenizer: whitespace rule, EOD handling, errors, HumanEval-X parity, training."""

import gzip
import json

import pytest

from codegeex_ms.env.paths import shared_data_dir
from codegeex_ms.data.tokenizer import CodeGeeXTokenizer, TOKENIZER_DIR_ENV, resolve_tokenizer_dir
from codegeex_ms.tokenizer_train import main as train_main, train_tokenizer

CODEGEEX_DIR = shared_data_dir() / "codegeex_tokenizer"
HUMANEVAL_DIR = shared_data_dir() / "humaneval-x"
FIELDS = ("prompt", "declaration", "canonical_solution", "test")


def encode_whitespaces(text):
    """The reference whitespace rule: replace space runs, longest first."""
    for n in range(10, 1, -1):
        text = text.replace(" " * n, f"<|extratoken_{8 + n}|>")
    return text


def decode_whitespaces(text):
    for n in range(2, 11):
        text = text.replace(f"<|extratoken_{8 + n}|>", " " * n)
    return text


def reference_tokenizer(path):
    from transformers import GPT2TokenizerFast

    ref = GPT2TokenizerFast.from_pretrained(str(path))
    ref.model_max_length = 10 ** 9  # only silences the length warning
    return ref


def reference_encode(ref, texts):
    return ref([encode_whitespaces(t) for t in texts], add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def codegeex():
    if not (CODEGEEX_DIR / "vocab.json").exists():
        pytest.skip(f"CodeGeeX tokenizer files missing: {CODEGEEX_DIR}")
    return CodeGeeXTokenizer.from_dir(CODEGEEX_DIR)


def test_sizes_and_eod(codegeex):
    assert codegeex.eod_id == 50256 and codegeex.vocab_size == 50400
    assert codegeex.encode("<|endoftext|>") == [50256]
    assert codegeex.encode("<|extratoken_1|><|extratoken_143|>") == [50257, 50399]


def test_whitespace_rule(codegeex):
    ids = codegeex.encode("a" + " " * 23 + "b")
    # 23 spaces = 10 + 10 + 3 -> <|extratoken_18|> twice (50274) and <|extratoken_11|> (50267)
    assert ids == [codegeex.encode("a")[0], 50274, 50274, 50267, codegeex.encode("b")[0]]
    for n in range(2, 11):
        assert codegeex.encode("x" + " " * n + "y")[1] == 50256 + 8 + n
    eleven = codegeex.encode(" " * 11 + "x")  # 10 spaces, then " x" as one BPE token
    assert eleven == [50274, codegeex.encode(" x")[0]]
    tabs = "\t\t\n\n x"
    assert all(i < 50257 for i in codegeex.encode(tabs))  # tabs, newlines, single spaces: BPE


def test_literal_eod_and_decode_flags(codegeex):
    text = "a = 1<|endoftext|>b   = 2"
    ids = codegeex.encode(text)
    assert ids.count(50256) == 1 and 50267 in ids
    literal = codegeex.encode(text, allow_special=False)
    assert 50256 not in literal and codegeex.decode(literal) == text
    plain = "x = 1\n" + " " * 14 + "y = '<|extratoken_3|>'\n"  # only the EOD is affected
    assert codegeex.encode(plain, allow_special=False) == codegeex.encode(plain)
    assert codegeex.decode(ids) == text
    assert codegeex.decode(ids, skip_eod=True) == "a = 1b   = 2"
    assert codegeex.encode_batch([text, "x"], allow_special=False) == [literal, codegeex.encode("x")]
    assert codegeex.decode_batch([ids, literal]) == [text, text]
    with pytest.raises(ValueError, match="50400"):
        codegeex.decode([64, 50400])  # first padded embedding row


def test_literal_whitespace_token_names_round_trip(codegeex):
    # Documented deviation: the reference turns this literal into 4 spaces; we keep the text.
    text = "s = '<|extratoken_12|>'"
    assert codegeex.decode(codegeex.encode(text)) == text


def test_humaneval_x_parity(codegeex):
    files = [HUMANEVAL_DIR / f"humaneval_{lang}.jsonl.gz"
             for lang in ("python", "cpp", "java", "js", "go", "rust")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        pytest.skip(f"HumanEval-X files missing: {missing}")
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            problems = [json.loads(line) for line in f if line.strip()]
        assert len(problems) == 164, path
        texts += [p[field] for p in problems for field in FIELDS]
    ref = reference_tokenizer(CODEGEEX_DIR)
    ours = codegeex.encode_batch(texts)
    theirs = reference_encode(ref, texts)
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, first: {texts[mismatched[0]][:200]!r}"
    decoded = codegeex.decode_batch(ours)
    assert decoded == texts
    assert [decode_whitespaces(t) for t in ref.batch_decode(theirs)] == texts
    assert any(50266 <= i <= 50274 for ids in ours for i in ids)  # whitespace tokens exercised
    print(f"HumanEval-X parity: {len(texts)} texts, {sum(map(len, ours))} tokens identical")


def test_missing_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_tokenizer_dir(tmp_path / "absent")
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(FileNotFoundError, match="added_tokens.json is missing"):
        CodeGeeXTokenizer.from_dir(tmp_path)
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"\${TOKENIZER_DIR_ENV}.*added_tokens.json"):
        CodeGeeXTokenizer.from_dir()


def test_env_var_resolution(tmp_path, monkeypatch):
    if not (CODEGEEX_DIR / "vocab.json").exists():
        pytest.skip(f"CodeGeeX tokenizer files missing: {CODEGEEX_DIR}")
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(tmp_path / "absent"))
    assert resolve_tokenizer_dir(CODEGEEX_DIR) == CODEGEEX_DIR  # an explicit path wins
    with pytest.raises(FileNotFoundError, match=TOKENIZER_DIR_ENV):
        resolve_tokenizer_dir()
    monkeypatch.setenv(TOKENIZER_DIR_ENV, str(CODEGEEX_DIR))
    assert resolve_tokenizer_dir() == CODEGEEX_DIR
    monkeypatch.delenv(TOKENIZER_DIR_ENV)
    assert resolve_tokenizer_dir() == CODEGEEX_DIR  # the shared-data default


CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n",
    "int main() {\n\tint x = 0;\n\tfor (int i = 0; i < 10; i++) {\n\t\tx += i;\n\t}\n"
    "            return x;          // done\n}\n",
    "// comment with unicode: héllo wörld ✓ 你好\nconst s = 'x'.repeat(3);\n",
] * 20


def test_train_tokenizer_format_and_parity(tmp_path):
    tok = train_tokenizer(CORPUS, 300, tmp_path / "tok", min_frequency=2)
    names = {p.name for p in (tmp_path / "tok").iterdir()}
    assert {"vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
            "tokenizer_config.json"} <= names
    with open(tmp_path / "tok" / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 300 and vocab["<|endoftext|>"] == 299 == tok.eod_id
    assert tok.vocab_size == 300 + 143
    assert not any("ĠĠ" in t for t in vocab)  # no merges spent on space runs
    texts = CORPUS[:3] + ["x" + " " * 37 + "y\n", "<|endoftext|>", "ünïcödé"]
    ref = reference_tokenizer(tmp_path / "tok")
    assert tok.encode_batch(texts) == reference_encode(ref, texts)
    assert [tok.decode(tok.encode(t)) for t in texts] == texts
    assert tok.encode("a" + " " * 10 + "b")[1] == tok.eod_id + 18


def test_train_tokenizer_cli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(CORPUS[:3]):
        (src / f"f{i}.{('py', 'c', 'js')[i]}").write_text(text * 5)
    tags = tmp_path / "tags.json"
    tags.write_text(json.dumps({"python": "# language: Python", "c": "// language: C",
                                "javascript": "// language: JavaScript"}))
    assert train_main([str(src), "-o", str(tmp_path / "tok"), "--vocab-size", "280",
                       "--language-tags", str(tags)]) == 0
    tok = CodeGeeXTokenizer.from_dir(tmp_path / "tok")
    assert tok.eod_id <= 279 and tok.decode(tok.encode("# language: Python\n")) == "# language: Python\n"
    assert train_main([str(tmp_path / "nothing"), "-o", str(tmp_path / "t2")]) == 2
    with pytest.raises(ValueError, match="257"):
        train_tokenizer(CORPUS, 100, tmp_path / "t3")
