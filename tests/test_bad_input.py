"""Bad input everywhere: every command, a table of wrong values for its flags and files.

Each case must end with exit code 2 and no traceback: one `error: ...` line for what flipctl
checks, or Click's usage message for what the command line parser rejects (a value that is
not a number, a missing required flag). Cases run in-process (`CliRunner`); a few run as real
`flipctl` processes.
"""

import json
import re
import shlex
import shutil
import subprocess

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from flip.models import FLIP, get_preset
from flip.train.checkpoint import save_checkpoint
from flipctl.main import app

USAGE = "usage"  # Click rejected the command line before flipctl ran


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths of good and bad inputs, by name."""
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = FLIP(get_preset("tiny"))
    good = root / "good-run"
    ckpt = save_checkpoint(good, 5, model, {"model": model.cfg.to_dict(), "train": {"mask_ratio": 0.5}}, None)

    other = root / "other-model"  # the config of another preset over tiny's weights
    shutil.copytree(good, other)
    other_ckpt = other / ckpt.name
    config = json.loads((other_ckpt / "config.json").read_text())
    config["model"] = get_preset("mini").to_dict()
    (other_ckpt / "config.json").write_text(json.dumps(config))

    half = root / "half-written"  # killed while writing: no weights yet
    half.mkdir()
    shutil.copy(ckpt / "config.json", half / "config.json")
    truncated = root / "truncated"
    shutil.copytree(ckpt, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])

    paths = {"good": good, "other": other_ckpt, "half": half, "truncated": truncated, "dir": root / "a-dir",
             "missing": root / "missing", "file": root / "a-file.txt"}
    paths["dir"].mkdir()
    paths["file"].write_text("hello\n")
    texts = {
        "bad.toml": "mask_ratio = [\n",
        "wrong-type.toml": 'mask_ratio = "high"\n',
        "unknown-key.toml": "mask_ration = 0.5\n",
        "out-of-range.toml": "batch_size = 1\n",
        "nul.toml": 'data = "shards\\u0000.tar"\n',
        "spec-bad.toml": "[[rows]\n",
        "spec-unknown.toml": 'name = "x"\nsurprise = 1\n',
        "spec-empty.toml": "",
        "spec-no-name.toml": '[sweep]\ntitle = "x"\n',
        "no-keys.json": '{"annotations": []}',
        "no-image.json": '[{"caption": "a dog"}]',
        "not-json.json": "{",
        "no-columns.csv": "path,text\na.jpg,a dog\n",
        "templates-no-placeholder.txt": "a photo\n",
        "empty.txt": "\n\n",
        "binary.txt": "\udcff",
    }
    for name, text in texts.items():
        paths[name] = root / name
        paths[name].write_bytes(text.encode("utf-8", errors="surrogateescape"))
    classes = root / "classes"  # a class-folder set of two classes, one image each
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(classes / name / "0.png")
    paths["classes"] = classes
    (root / "dir.json").mkdir()
    (root / "dir.csv").mkdir()
    paths["dir.json"], paths["dir.csv"] = root / "dir.json", root / "dir.csv"
    return paths


E = "--ckpt"
# (command line with {placeholders} for `files`, text the message must hold (case-insensitive))
CASES = [
    # train: flags
    ("train --batch-size abc", USAGE), ("train --batch-size 1", "--batch-size"),
    ("train --mask-ratio 1", "--mask-ratio"),
    ("train --mask-ratio -0.5", "--mask-ratio"), ("train --mask-ratio nan", "--mask-ratio"),
    ("train --samples 0", "--samples"), ("train --epochs -1", "--epochs"), ("train --epochs 0", "--epochs"),
    ("train --context-length 2", "context"), ("train --lr 0", "--lr"), ("train --lr -1", "--lr"),
    ("train --base-lr 0", "--base-lr"), ("train --warmup -5", "--warmup"), ("train --warmup-fraction 2", "warmup"),
    ("train --min-lr-ratio 1.5", "--min-lr-ratio"), ("train --weight-decay -1", "--weight-decay"),
    ("train --beta1 1", "--beta1"), ("train --beta2 -0.1", "--beta2"), ("train --eps 0", "--eps"),
    ("train --grad-clip 0", "--grad-clip"), ("train --precision fp8", "--precision"),
    ("train --workers -1", "--workers"), ("train --shuffle-buffer 0", "--shuffle-buffer"),
    ("train --crop-scale-min 0", "--crop-scale-min"), ("train --accum-steps 0", "--accum-steps"),
    ("train --data-fraction 0", "--data-fraction"), ("train --data-fraction 1.5", "--data-fraction"),
    ("train --eval-every 0", "--eval-every"), ("train --eval-images 0", "--eval-images"),
    ("train --log-every 0", "--log-every"), ("train --ckpt-every 0", "--ckpt-every"),
    ("train --keep-checkpoints 0", "--keep-checkpoints"), ("train --max-bad-fraction 2", "--max-bad-fraction"),
    ("train --on-nonfinite ignore", "--on-nonfinite"), ("train --mask-strategy spiral", "--mask-strategy"),
    ("train --text-mask half", "--text-mask"), ("train --text-mask-ratio 1", "--text-mask-ratio"),
    ("train --recon-weight -1", "--recon-weight"), ("train --decoder-depth 0", "--decoder-depth"),
    ("train --decoder-width 130 --recon-weight 1", "decoder"), ("train --report-to mlflow", "report"),
    ("train --model Z/99", "model"), ("train --out", USAGE), ("train --device tpu", "--device"),
    ("train --device cuda:x", "--device"), ("train --out {file}", "{file}"),
    ("train --seed x", USAGE), ("train --nproc 0", "nproc"), ("train --launcher mars", "launcher"),
    ("train --launcher slurm --time soon", "time"), ("train --nnodes 2 --node-rank 5", "node-rank"),
    # train: files
    ("train --data {missing}", "not found"), ("train --data {file} --samples 512 --workers 0", "{file}"),
    ("train --data {dir}", "{dir}"),
    ("train --data ''", "empty"), ("train --eval-data {missing}.csv", "not found"),
    ("train --eval-data {no-columns.csv}", "columns"), ("train --eval-zeroshot {missing}", "not found"),
    ("train --eval-templates {templates-no-placeholder.txt}", "placeholder"),
    ("train --init-from {missing}", "{missing}"), ("train --init-from {half}", "model.safetensors missing"),
    ("train --init-from {other}", "{other}"), ("train --config {missing}", "not found"),
    ("train --config {dir}", "{dir}"), ("train --config {bad.toml}", "TOML"),
    ("train --config {wrong-type.toml}", "mask_ratio"), ("train --config {unknown-key.toml}", "mask_ration"),
    ("train --config {out-of-range.toml}", "batch_size"), ("train --config {nul.toml}", "data"),
    ("train --config {binary.txt}", "binary.txt"), ("train --resume --out {missing}", "nothing to resume"),
    ("train --resume --out {half}", "{half}"), ("train --resume --out {file}", "{file}"),
    # tune-unmasked
    ("tune-unmasked", USAGE), (f"tune-unmasked {E} {{missing}}", "{missing}"),
    (f"tune-unmasked {E} {{half}}", "model.safetensors missing"), (f"tune-unmasked {E} {{truncated}}", ""),
    (f"tune-unmasked {E} {{good}} --samples 0", "--samples"), (f"tune-unmasked {E} {{good}} --lr -1", "--lr"),
    (f"tune-unmasked {E} {{good}} --epochs x", USAGE), (f"tune-unmasked {E} {{good}} --warmup -1", "--warmup"),
    # models, plan, bench
    ("models --json {dir}", "{dir}"), ("models --json {missing}/x/y.json", "{missing}"),
    ("plan --model tiny --batch-size 8", USAGE), ("plan --model Z --batch-size 8 --gpus 1", "model"),
    ("plan --model tiny --batch-size 0 --gpus 1", "--batch-size"),
    ("plan --model tiny --batch-size 8 --gpus 0", "--gpus"),
    ("plan --model tiny --batch-size 8 --gpus 1 --gpu-memory lots", "--gpu-memory"),
    ("plan --model tiny --batch-size 8 --gpus 1 --mask-ratio 2", "--mask-ratio"),
    ("plan --model tiny --batch-size 8 --gpus 1 --gpus-per-node 0", "--gpus-per-node"),
    ("plan --model tiny --batch-size 8 --gpus 1 --json {dir}", "{dir}"),
    ("bench --model Z", "model"), ("bench --batch-size 1", "--batch-size"),
    ("bench --mask-ratios a,b", "--mask-ratios"),
    ("bench --mask-ratios 1.5", "--mask-ratios"), ("bench --device tpu", "device"),
    ("bench --precision fp8", "precision"),
    ("bench --steps 0", "--steps"), ("bench --warmup -1", "--warmup"),
    ("bench --memory-limit lots --max-batch", "memory"),
    ("bench --compare timm", "--compare"), ("bench --threads 0", "--threads"), ("bench --workers -1", "--workers"),
    # data
    ("data synth", USAGE), ("data synth {dir} --train-samples 0", "samples"),
    ("data synth {dir} --shard-size 0", "shard"), ("data synth {dir} --image-size 3", "image"),
    ("data synth {dir} --captions-per-image 0", "captions"), ("data synth {file}", "{file}"),
    ("data synth {dir} --workers -1", "--workers"), ("data jpeg-shards {file}", "{file}"),
    # eval zeroshot
    ("eval zeroshot", USAGE), (f"eval zeroshot {E} {{missing}}", "{missing}"),
    (f"eval zeroshot {E} {{half}}", "model.safetensors missing"),
    (f"eval zeroshot {E} {{truncated}}", "model.safetensors"), (f"eval zeroshot {E} {{other}}", "{other}"),
    (f"eval zeroshot {E} {{file}}", "{file}"), (f"eval zeroshot {E} {{good}} --data {{missing}}", "{missing}"),
    (f"eval zeroshot {E} {{good}} --data {{file}}", "{file}"), (f"eval zeroshot {E} {{good}} --data {{dir}}", "{dir}"),
    (f"eval zeroshot {E} {{good}} --templates {{missing}}", "--templates"),
    (f"eval zeroshot {E} {{good}} --templates {{dir}}", "--templates"),
    (f"eval zeroshot {E} {{good}} --templates {{templates-no-placeholder.txt}}", "placeholder"),
    (f"eval zeroshot {E} {{good}} --templates {{empty.txt}}", "empty"),
    (f"eval zeroshot {E} {{good}} --templates {{binary.txt}}", "binary.txt"),
    (f"eval zeroshot {E} {{good}} --classnames {{missing}}", "--classnames"),
    (f"eval zeroshot {E} {{good}} --data {{classes}} --classnames {{file}}", "1 class names but"),
    (f"eval zeroshot {E} {{good}} --mask-ratio 1.5", "mask ratio"), (f"eval zeroshot {E} {{good}} --views 0", "views"),
    (f"eval zeroshot {E} {{good}} --views 1000", "views"), (f"eval zeroshot {E} {{good}} --batch-size 0", "batch size"),
    (f"eval zeroshot {E} {{good}} --precision fp8", "precision"),
    (f"eval zeroshot {E} {{good}} --device tpu", "device"),
    (f"eval zeroshot {E} {{good}} --workers -1", "--workers"),
    (f"eval zeroshot {E} {{good}} --seed x", USAGE),
    (f"eval zeroshot {E} {{good}} --split nope --data {{dir}}", "{dir}"),
    (f"eval zeroshot {E} {{good}} --json {{dir}} --data {{missing}}", "{dir}"),  # outputs are checked first
    # eval retrieval
    (f"eval retrieval {E} {{good}} --data {{missing}}.csv", "not found"),
    (f"eval retrieval {E} {{good}} --data {{no-columns.csv}}", "columns"),
    (f"eval retrieval {E} {{good}} --data {{no-keys.json}}", "Karpathy"),
    (f"eval retrieval {E} {{good}} --data {{no-image.json}}", "Karpathy"),
    (f"eval retrieval {E} {{good}} --data {{not-json.json}}", "not-json.json"),
    (f"eval retrieval {E} {{good}} --data {{dir.json}}", "dir.json"),
    (f"eval retrieval {E} {{good}} --data {{dir.csv}}", "dir.csv"),
    (f"eval retrieval {E} {{good}} --data {{dir}}", "{dir}"),
    (f"eval retrieval {E} {{good}} --data {{file}}", "{file}"),
    (f"eval retrieval {E} {{half}}", "model.safetensors missing"), (f"eval retrieval {E} {{other}}", "{other}"),
    (f"eval retrieval {E} {{good}} --views -1", "views"), (f"eval retrieval {E} {{good}} --workers -1", "--workers"),
    (f"eval retrieval {E} {{good}} --batch-size 0", "batch size"),
    (f"eval retrieval {E} {{missing}} --device tpu", "device"),
    # eval linear-probe
    (f"eval linear-probe {E} {{good}}", USAGE), (f"eval linear-probe {E} {{good}} --data {{missing}}", "{missing}"),
    (f"eval linear-probe {E} {{good}} --data {{dir}}", "{dir}"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --val-fraction 2", "fraction"),
    (f"eval linear-probe {E} {{half}} --data {{dir}}", "model.safetensors missing"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --max-iter 0", "--max-iter"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --test-fraction 0", "--test-fraction"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --workers -1", "--workers"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --batch-size 0", "batch size"),
    (f"eval linear-probe {E} {{good}} --data {{dir}} --device tpu", "device"),
    # export
    ("export {dir}/out", USAGE), (f"export {{dir}}/out {E} {{missing}}", "{missing}"),
    (f"export {{dir}}/out {E} {{half}}", "model.safetensors missing"),
    (f"export {{dir}}/out {E} {{truncated}}", "model.safetensors"),
    (f"export {{dir}}/out {E} {{other}}", "{other}"), (f"export {{dir}}/out {E} {{good}} --format onnx", "--format"),
    (f"export {{dir}}/out {E} {{good}} --weights pt", "weights format"), (f"export {{file}} {E} {{good}}", "{file}"),
    (f"export {{dir}}/out {E} {{good}} --name 'a b/c'", "a b/c"),
    (f"export {{dir}}/out {E} {{good}} --name a/b", "--name"),
    (f"export {{dir}}/out {E} {{missing}} --name ..", "--name"),
    # sweep, report
    ("sweep", "sweep"), ("sweep nosuchsweep", "nosuchsweep"), ("sweep {missing}.toml", "not found"),
    ("sweep {spec-bad.toml}", "TOML"), ("sweep {spec-unknown.toml}", "surprise"),
    ("sweep {dir}", "{dir}"), ("sweep {spec-empty.toml}", "[sweep]"), ("sweep {spec-no-name.toml}", "name"),
    ("sweep mask-ratio --preset huge --dry-run", "unknown preset"),
    ("sweep mask-ratio --preset smoke --dry-run --eval-data {no-columns.csv}", "--eval-data"),
    ("sweep mask-ratio --preset smoke --dry-run --eval-data {missing}.csv", "not found"),
    ("sweep mask-ratio --preset smoke --eval-zeroshot {file} --store {dir}/store", "--eval-zeroshot"),
    ("sweep mask-ratio --seeds 0 --dry-run", "--seeds"), ("sweep mask-ratio --jobs 0 --dry-run", "--jobs"),
    ("sweep mask-ratio --seeds x", USAGE), ("sweep mask-ratio --max-parallel 0 --dry-run", "--max-parallel"),
    ("sweep mask-ratio --data {missing} --dry-run", "--eval-zeroshot"),
    ("sweep mask-ratio --store {file} --dry-run --preset smoke", "{file}"),
    ("report", USAGE), ("report {missing}", "{missing}"), ("report {dir}", "sweep.json"), ("report {file}", "{file}"),
    # unknown commands and flags
    ("trian", USAGE), ("train --mask-ratioo 0.5", USAGE), ("eval nothing", USAGE), ("data synth {dir} --bogus", USAGE),
]


def _placeholders(line: str) -> str:
    """`{no-columns.csv}` -> `{no_columns_csv}`: names that str.format accepts."""
    return re.sub(r"\{([^}]+)\}", lambda m: "{" + m.group(1).replace(".", "_").replace("-", "_") + "}", line)


@pytest.mark.parametrize("line, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(line, needle, files, tmp_path, monkeypatch):
    values = {k.replace(".", "_").replace("-", "_"): str(v) for k, v in files.items()}
    args = [part.format(**values) for part in shlex.split(_placeholders(line))]
    if args[0] == "train" and "--out" not in args and "--resume" not in args:
        args += ["--out", str(tmp_path / "run")]  # never the default runs/
    monkeypatch.chdir(tmp_path)  # a case that got through would write to runs/ here, not in the repository
    _refuse_to_generate_data(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, args)
    output = result.output
    assert ("Traceback" not in output + result.stderr
            and not isinstance(result.exception, (AssertionError, TypeError))), (output, result.exception)
    assert result.exit_code == 2, (result.exit_code, output, repr(result.exception))
    if needle == USAGE:  # Click's usage message, or its error box alone for a flag without its value
        assert "Usage:" in output or "Error" in output, output
        return
    lines = result.stderr.strip().splitlines()  # a run that got as far as its header line says so first
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and len(lines) <= 2, output
    assert _placeholders(needle).format(**values).lower() in errors[0].lower(), output


def _refuse_to_generate_data(tmp_path, monkeypatch) -> None:
    """Every bad input is refused before any data is generated (the built-in set takes a minute): with an
    empty cache, generating it fails the test."""
    def generate(*args, **kwargs):
        raise AssertionError("generated data before refusing the bad input")

    monkeypatch.setenv("FLIP_CACHE", str(tmp_path / "cache"))  # no built-in set to reuse
    monkeypatch.setattr("flip.data.builtin.write_builtin_dataset", generate)
    monkeypatch.setattr("flipctl.data_cmd.write_builtin_dataset", generate)
    monkeypatch.setattr("flip.data.synth_jpeg.write_jpeg_shards", generate)


@pytest.mark.integration  # flipctl processes
@pytest.mark.parametrize("args, needle", [
    (["train", "--batch-size", "1"], "--batch-size"),
    (["eval", "zeroshot", "--ckpt", "{half}"], "model.safetensors missing"),
    (["eval", "retrieval", "--ckpt", "{good}", "--data", "{no-keys.json}"], "Karpathy"),
    (["sweep", "{spec-bad.toml}"], "TOML"),
])
def test_real_processes(args, needle, files, tmp_path):
    """The same as real `flipctl` processes: stderr holds one line, stdout nothing of it."""
    values = {k.replace(".", "_").replace("-", "_"): str(v) for k, v in files.items()}
    args = [_placeholders(a).format(**values) for a in args]
    proc = subprocess.run(["flipctl", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert needle.lower() in proc.stderr.lower() and "Traceback" not in proc.stderr + proc.stdout
