import json
from pathlib import Path

import pytest

from hemaseg.engine.evaluate import select_split, split_names
from hemaseg.errors import HemasegInputError
from hemaseg.io.datasets import Pair


def test_one_split_reader_for_pairs_and_photos(tmp_path):
    """The cells task read split.json its own way (another error for the same bad file); now both go through
    split_names / select_split."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a/x.png"], "val": [["b/y.png", "b/y_mask.png"], "z.jpg"]}))
    assert split_names(split) == {"y.png", "z.jpg"} and split_names(split, "train") == {"x.png"}
    pairs = [Pair(Path("d/y.png"), Path("d/y_m.png")), Pair(Path("d/x.png"), Path("d/x_m.png"))]
    assert [p.image.name for p in select_split(pairs, split)] == ["y.png"]
    photos = [(Path("p/z.jpg"), {}), (Path("p/w.jpg"), {})]
    assert [p.name for p, _ in select_split(photos, split, path=lambda photo: photo[0])] == ["z.jpg"]
    for text, says in (("not json", "cannot read it"), ('{"train": []}', "no 'val' list"),
                       ('{"val": [3]}', "no image path"), ('{"val": ["q.png"]}', "none of its 'val' images")):
        split.write_text(text)
        with pytest.raises(HemasegInputError, match=says):
            select_split(pairs, split)
