"""`edge_chat bench` on the tiny model: sane positive numbers in JSON, the second turn
evaluates only its new tokens (prefix reuse), --plot writes a PNG, bad input fails
in one line. No timing thresholds: the machine is shared and noisy."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edge_chat.bench.measure import parse_lengths, summary
from edge_chat.bench.prompts import exact_prompt, filler_tokens
from edge_chat.cli import app
from edge_chat.errors import EdgeChatError

SMALL = ["--prompt-lengths", "32", "--gen", "8", "--reps", "1", "--history", "256",
         "--edits", "0"]


def _bench(args: list[str]):
    return CliRunner().invoke(app, ["bench", *args])


def _check_result(r: dict, fmt: str) -> None:
    assert "error" not in r, r
    assert r["format"] == fmt
    assert r["size_bytes"] > 0 and r["load_s"] > 0
    assert 0 < r["rss_before_load"] <= r["peak_rss"] and r["rss_after_load"] <= r["peak_rss"]
    assert r["threads"] >= 1
    assert r["others_cpu"] is None or 0 <= r["others_cpu"] <= 1
    (ln,) = r["lengths"]
    assert ln["prompt_tokens"] == 32
    assert ln["n_prompt_evaluated"] == 32            # the cache was reset before the run
    assert ln["gen_tokens"] == 8                     # EOS banned: exactly --gen tokens
    for key in ("ttft", "prefill_tps", "decode_tps"):
        s = ln[key]
        assert len(s["samples"]) == 1 and s["min"] <= s["median"] <= s["max"]
        assert s["median"] > 0
    st = r["second_turn"]
    assert st["first_n_prompt_evaluated"] == st["first_prompt_tokens"]
    assert 200 <= st["history_tokens"] <= 260
    # turn 2 evaluates only what turn 1 left out of the cache: its own new tokens
    # (plus at most one replayed token), not the history
    assert 0 < st["second_n_prompt_evaluated"] <= st["second_new_tokens"] + 1
    assert st["second_n_prompt_evaluated"] < st["second_prompt_tokens"] // 4
    assert st["first_ttft"]["median"] > 0 and st["second_ttft"]["median"] > 0
    assert st["ratio"] > 0


def test_bench_gguf_json_and_plot(tiny_gguf, tmp_path):
    png = tmp_path / "bench.png"
    r = _bench([str(tiny_gguf["q4_k_m"]), *SMALL, "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    _check_result(res, "gguf")
    assert res["quant"] == "q4_k_m"
    assert res["config"]["gen"] == 8 and res["config"]["prompt_lengths"] == [32]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bench_gguf_and_onnx_side_by_side(tiny_gguf, tiny_onnx):
    r = _bench([str(tiny_gguf["q8_0"]), str(tiny_onnx["int4"]), *SMALL, "--json"])
    assert r.exit_code == 0, r.output
    gguf, onnx = json.loads(r.stdout)
    _check_result(gguf, "gguf")
    _check_result(onnx, "onnx")
    assert onnx["quant"] == "int4"


def test_bench_table(tiny_gguf):
    r = _bench([str(tiny_gguf["q4_k_m"]), *SMALL, "--history", "0"])
    assert r.exit_code == 0, r.output
    assert "prefill tok/s" in r.stdout and "tiny-q4_k_m" in r.stdout


def test_bench_code_edits_with_a_draft_model(tiny_gguf):
    """The code-edit workload: plain, speculative (here with a draft model) and
    predicted answers are the same text; acceptance and speed-ups are reported."""
    r = _bench([str(tiny_gguf["f16"]), "--prompt-lengths", "32", "--gen", "4", "--reps", "1",
                "--history", "0", "--edits", "2", "--speculative", "draft",
                "--draft", str(tiny_gguf["q8_0"]), "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    e = res["code_edit"]
    assert e["mode"] == "draft" and e["edits"] == 2 and e["identical"] == 2
    assert e["plain"]["acceptance"] is None and e["plain"]["speedup"] == 1.0
    for run in ("speculative", "prediction"):
        assert e[run]["tokens"] == e["plain"]["tokens"] > 0
        assert 0 < e[run]["acceptance"] <= 1 and e[run]["decode_tps"] > 0
    r = _bench([str(tiny_gguf["f16"]), "--prompt-lengths", "32", "--gen", "4", "--reps", "1",
                "--history", "0", "--edits", "1"])
    assert r.exit_code == 0, r.output
    assert "code edits" in r.stdout and "predicted" in r.stdout and "1/1" in r.stdout


def test_bench_prompt_longer_than_the_window_fails_clearly(tiny_gguf):
    r = _bench([str(tiny_gguf["q4_k_m"]), "--prompt-lengths", "128", "--gen", "8",
                "--reps", "1", "--ctx-size", "64", "--json"])
    assert r.exit_code == 1
    (res,) = json.loads(r.stdout)
    assert "context window" in res["error"]
    assert "--ctx-size" in r.stderr


def test_bench_bad_input():
    r = _bench(["nope.gguf", "--prompt-lengths", "32"])
    assert r.exit_code == 1 and r.stderr.startswith("error:") and len(r.stderr.splitlines()) == 1
    with pytest.raises(EdgeChatError):
        parse_lengths("12,x")
    with pytest.raises(EdgeChatError):
        parse_lengths("1")
    assert parse_lengths("128, 1024") == [128, 1024]
    assert summary([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "samples": [3.0, 1.0, 2.0]}


def test_exact_prompt_has_the_asked_length(tiny_gguf):
    from edge_chat.engines import EngineOptions
    from edge_chat.runtime import open_chat
    m = open_chat(str(tiny_gguf["q4_k_m"]), EngineOptions())
    try:
        filler = filler_tokens(m.engine, 300)
        assert len(filler) == 300
        for n in (16, 100, 300):
            toks = exact_prompt(m, n, filler)
            assert len(toks) == n
            head = m.tokenize_prompt(m.render([{"role": "user", "content": "x"}]))[:2]
            assert toks[:2] == head                 # the chat template frames the filler
        with pytest.raises(EdgeChatError):
            exact_prompt(m, 3, filler)
    finally:
        m.engine.close()


def test_bench_concurrency(tiny_gguf):
    r = _bench([str(tiny_gguf["q4_k_m"]), "--concurrency", "1,2,4", "--prompt-lengths", "32",
                "--gen", "16", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)
    assert res["slots"] == 4 and "lengths" not in res or not res["lengths"]
    rows = res["concurrency"]
    assert [row["concurrency"] for row in rows] == [1, 2, 4]
    for row in rows:
        assert row["streams"] == row["concurrency"]
        assert row["tokens"] == 16 * row["concurrency"]     # EOG banned: --gen each
        assert row["aggregate_tps"] > 0 and row["stream_decode_tps"] > 0
        assert 0 < row["ttft_median"] <= row["ttft_max"]
    assert rows[0]["x_single"] == 1.0
    r = _bench([str(tiny_gguf["q4_k_m"]), "--concurrency", "0,2"])
    assert r.exit_code == 1 and "--concurrency" in r.stderr
