"""The consumer examples in docs/WIRE.md and docs/CONSUMING.md run and decode the vectors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import wire_vectors

DOCS = Path(__file__).resolve().parents[2] / "docs"
GO = shutil.which("go") or (
    "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
)


def blocks(doc: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", (DOCS / doc).read_text(), re.M | re.S)


@pytest.mark.skipif(GO is None, reason="no Go toolchain on this machine")
def test_go_example_decodes_both_prediction_layouts_to_the_documented_records(tmp_path) -> None:
    assert GO is not None
    (program,) = [b for b in blocks("WIRE.md", "go") if b.startswith("// predictions.go")]
    source = tmp_path / "predictions.go"
    source.write_text(program)
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    gofmt = Path(GO).with_name("gofmt")
    unformatted = subprocess.run([str(gofmt), "-l", str(source)], capture_output=True, text=True)
    assert unformatted.stdout == "" and unformatted.returncode == 0, "gofmt the example"
    exe = tmp_path / "predictions"
    subprocess.run([GO, "build", "-o", str(exe), str(source)], env=env, check=True, timeout=300)
    vectors = [v for v in wire_vectors.load().values() if v["topic"] == "predictions"]
    lines = [f"{v['schema']} {v['value_hex']}" for v in vectors]
    lines += ["prediction/1 00ff", "prediction/2 00", "prediction+json/1 7b7d"]  # junk: skipped
    run = subprocess.run(
        [str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert [json.loads(line) for line in run.stdout.splitlines()] == [v["record"] for v in vectors]
    assert run.stderr.count("skipped:") == 3


def test_python_examples_compile_and_the_stdlib_decoder_reads_the_vectors() -> None:
    found = blocks("CONSUMING.md", "python")
    for i, code in enumerate(found):
        compile(code, f"CONSUMING.md python block {i}", "exec")
    (stdlib,) = [code for code in found if "def decode_prediction_v1" in code]
    scope: dict = {}
    exec(stdlib, scope)
    for v in wire_vectors.load().values():
        if v["schema"] == "prediction/1":
            assert scope["decode_prediction_v1"](bytes.fromhex(v["value_hex"])) == v["record"]
