#!/usr/bin/env python3
"""Regenerates src/tokenizer/testdata/: what the Hugging Face `tokenizers` library makes of
tinyshakespeare and of hand-written hard cases, for the two shared models.

    python3 scripts/dev/make_tokenizer_expectations.py [--shared ../shared]

Writes, for NAME in llama3, llama2 (the shared models shakespeare-NAME):
  NAME_tinyshakespeare.u16   ids of data/tinyshakespeare.txt, no special tokens, little-endian
                             uint16 (both vocabularies are below 65536)
  NAME_cases.json            [{"text", "ids", "ids_with_special", "decoded", "decoded_special",
                               "decoded_skip", "roundtrip"}], where decoded = decode(ids),
                             decoded_special = decode(ids_with_special), decoded_skip =
                             decode(ids_with_special, skip_special_tokens=True), and roundtrip
                             says whether decoded == text.
"""
import argparse
import json
import pathlib
import struct

from tokenizers import Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "src" / "tokenizer" / "testdata"
MODELS = {"llama3": "shakespeare-llama3", "llama2": "shakespeare-llama2"}


def hard_cases():
    cases = [
        "",
        " ",
        "  ",
        "hello",
        " hello",
        "hello ",
        "  hello  world  ",
        "a    b",
        "\t",
        "\ttab\tseparated\t",
        "\n",
        "\n\n\n",
        " \n ",
        "line one\nline two\r\nline three\r",
        "trailing newline\n",
        " \t \n\t\n  x",
        "0",
        "42",
        "1234567890",
        "3.14159265358979 and 2,718,281",
        "31415926535897932384626433832795028841971693993751058209749445923",
        "year 2024, 1st, 22nd, 100%",
        "!!!",
        "...???!!!",
        "Hello, world! (Yes?) [No.] {Maybe;} <tag> a--b -- 'q' \"quoted\"",
        "@#$%^&*()_+-=~`|\\/",
        "it's don't we're they've I'm you'll he'd",
        "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
        "It'S dOn'T",
        "'s 't 're",
        "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m se\u00f1or",
        "e\u0301 combining acute",
        "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
        "\u4f60\u597d\uff0c\u4e16\u754c\u3002\u4e2d\u6587\u6587\u672c",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c \u30ab\u30bf\u30ab\u30ca",
        "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "emoji \U0001F600\U0001F680 end",
        "\U0001F44D\U0001F3FD skin tone",
        "family \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 zwj",
        "\U0001F3F3\ufe0f\u200d\U0001F308 flag",
        "\u00a0non-breaking\u00a0space",
        "zero\u200bwidth",
        "\ufeffbom",
        "\u2028line sep\u2029para sep",
        "nel\u0085char",
        "\x00nul and \x7f del",
        "\ue000 private use \U0010FFFF max",
        "\U0001D11E musical \U0001D400 math bold",
        "\ufffd replacement char",
        "\u2581 lower one eighth block \u2581\u2581",
        "ROMEO:\nBut, soft! what light through yonder window breaks?",
        "a" * 3000,
        "supercalifragilisticexpialidocious" * 40,
        "9" * 500,
        "ab" * 1000 + " " + "\u00e9" * 300,
        "x" + " " * 200 + "y",
        "\n" * 50,
    ]
    return cases


def special_cases(tok):
    added = [t.content for _, t in sorted(tok.get_added_tokens_decoder().items())]
    specials = added[:4] + [t for t in added if t in ("<0x41>", "<0x0A>")]
    out = []
    for s in specials:
        out += [s, "a" + s + "b", "Hello " + s + " world", s + s, " " + s + "\n"]
    out.append("<|begin_of_text|>Hi<|end_of_text|> <s>x</s> <unk> <0x41><0xE4>")
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    args = parser.parse_args()
    shared = pathlib.Path(args.shared)
    OUT.mkdir(parents=True, exist_ok=True)
    text = (shared / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    for name, folder in MODELS.items():
        tok = Tokenizer.from_file(str(shared / "models" / folder / "tokenizer.json"))
        ids = tok.encode(text, add_special_tokens=False).ids
        assert max(ids) < 65536
        (OUT / f"{name}_tinyshakespeare.u16").write_bytes(struct.pack(f"<{len(ids)}H", *ids))
        records = []
        for case in hard_cases() + special_cases(tok):
            plain = tok.encode(case, add_special_tokens=False).ids
            special = tok.encode(case, add_special_tokens=True).ids
            decoded = tok.decode(plain, skip_special_tokens=False)
            records.append({
                "text": case,
                "ids": plain,
                "ids_with_special": special,
                "decoded": decoded,
                "decoded_special": tok.decode(special, skip_special_tokens=False),
                "decoded_skip": tok.decode(special, skip_special_tokens=True),
                "roundtrip": decoded == case,
            })
        with open(OUT / f"{name}_cases.json", "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=True, separators=(",", ":"))
            f.write("\n")
        print(f"{name}: {len(ids)} tinyshakespeare ids, {len(records)} cases")


if __name__ == "__main__":
    main()
