"""Image-text retrieval evaluation on a set with several captions per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from flip.data.pipeline import eval_transform
from flip.data.shards import DataError
from flip.data.tokenizer import Tokenizer
from flip.eval.metrics import retrieval_recall


@dataclass
class RetrievalSet:
    images: torch.Tensor  # [n_images, 3, H, W], preprocessed
    tokens: torch.Tensor  # [n_texts, T]
    text_to_image: torch.Tensor  # [n_texts]
    captions: list[str]


def load_csv_retrieval_set(csv_path: str | Path, image_size: int, context_length: int,
                           images_root: str | Path | None = None, limit: int | None = None) -> RetrievalSet:
    """A CSV with `filepath,caption` rows; a repeated filepath means several captions of one image."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise DataError(f"retrieval captions file not found: {csv_path}")
    sep = "\t" if csv_path.suffix == ".tsv" else ","
    table = pd.read_csv(csv_path, sep=sep, dtype=str, keep_default_na=False)
    if not {"filepath", "caption"} <= set(table.columns):
        raise DataError(f"{csv_path} needs 'filepath' and 'caption' columns, found {list(table.columns)}")
    root = Path(images_root) if images_root else csv_path.parent
    paths = list(dict.fromkeys(table["filepath"]))  # first-seen order
    if limit is not None:
        paths = paths[:limit]
        table = table[table["filepath"].isin(set(paths))]
    index = {p: i for i, p in enumerate(paths)}
    transform = eval_transform(image_size)
    images = []
    for p in paths:
        try:
            images.append(transform(Image.open(root / p).convert("RGB")))
        except OSError as exc:
            raise DataError(f"cannot read retrieval image {root / p}: {exc}") from exc
    captions = list(table["caption"])
    return RetrievalSet(
        images=torch.stack(images),
        tokens=Tokenizer(context_length)(captions),
        text_to_image=torch.tensor([index[p] for p in table["filepath"]]),
        captions=captions,
    )


@torch.no_grad()
def encode_in_batches(fn, inputs: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    return torch.cat([fn(inputs[i:i + batch_size].to(device)).float() for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def evaluate_retrieval(model, data: RetrievalSet, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    was_training = model.training
    model.eval()
    image_features = encode_in_batches(model.encode_image, data.images, batch_size, device)
    text_features = encode_in_batches(model.encode_text, data.tokens, batch_size, device)
    model.train(was_training)
    return retrieval_recall(image_features @ text_features.T, data.text_to_image.to(device))
