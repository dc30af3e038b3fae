import numpy as np

from hemaseg.core.labels import polygons, split_instances, wbc_objects
from hemaseg.tasks.wbc import clean_wbc_classes


def _discs(centers, r, shape=(100, 160)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx in centers:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return m


def test_touching_discs_split_in_two():
    m = _discs([(50, 50), (50, 86)], 20)  # overlap by 4 px
    from scipy.ndimage import label

    assert label(m)[1] == 1
    inst = split_instances(m, diameter=40)
    assert inst.max() == 2
    # Each instance holds one disc centre.
    assert inst[50, 50] != inst[50, 86] and inst[50, 50] > 0 and inst[50, 86] > 0


def test_single_and_separate_discs():
    assert split_instances(_discs([(50, 50)], 20), diameter=40).max() == 1
    assert split_instances(_discs([(30, 30), (70, 120)], 15), diameter=30).max() == 2


def test_polygons_and_objects():
    m = _discs([(50, 50)], 20)
    (poly,) = polygons(m)
    xs, ys = np.array(poly).T
    assert 28 <= xs.min() <= 32 and 68 <= xs.max() <= 72
    classes = m.astype(np.uint8)
    classes[_discs([(50, 50)], 8)] = 2
    objs = wbc_objects(classes, split_instances(m, 40))
    assert len(objs) == 1
    o = objs[0]
    assert o["bounding_box"] == {"x1": 31, "x2": 70, "y1": 31, "y2": 70}
    assert o["nucleus_area"] == int(_discs([(50, 50)], 8).sum())
    assert len(o["nucleus_vertices"]) == 1 and not o["touches_border"]


def test_clean_removes_specks_fills_holes():
    c = np.zeros((50, 50), np.uint8)
    c[10:30, 10:30] = 1
    c[15:18, 15:18] = 0
    c[45, 45] = 1
    out = clean_wbc_classes(c, min_area=20)
    assert out[16, 16] == 1 and out[45, 45] == 0


def test_big_touching_cells_split_on_a_smaller_copy():
    m = _discs([(100, 100), (100, 210)], 60, shape=(200, 320))
    inst = split_instances(m, diameter=120)  # > 2 x SPLIT_DIAMETER: the downsampled path
    assert inst.max() == 2 and inst[100, 100] != inst[100, 210]
    assert np.array_equal(inst > 0, m)  # every mask pixel labelled, nothing outside


def test_no_cell_leaves_no_cytoplasm_or_nucleus_in_the_class_map():
    # A map of red cells taken for cytoplasm with specks of "nucleus", far too little for a cell of
    # the diameter: no instance, and then no class pixel either (a BCDD field with no WBC once
    # came out with 57 % of its pixels cytoplasm and not one cell).
    from hemaseg.tasks.wbc import postprocess_classes

    classes = np.zeros((100, 160), np.uint8)
    classes[_discs([(50, 50), (50, 110)], 30)] = 1
    classes[48:51, 48:51] = 2
    c, i = postprocess_classes(classes, diameter=120)
    assert i.max() == 0 and not c.any()


def test_cytoplasm_is_limited_to_one_nucleus_diameter():
    from hemaseg.tasks.wbc import limit_cytoplasm

    classes = np.zeros((60, 200), np.uint8)
    classes[10:50, 10:190] = 1  # a cell smeared over its neighbours
    classes[25:35, 25:35] = 2  # nucleus, equivalent diameter ~11.3 px
    inst = (classes > 0).astype(np.int32)
    c, i = limit_cytoplasm(classes, inst, max_reach=1.0)
    assert c[30, 40] == 1 and i[30, 40] == 1  # 5 px from the nucleus: kept
    assert c[30, 100] == 0 and i[30, 100] == 0  # 65 px away: cut
    assert (c == 2).sum() == 100  # the nucleus itself is untouched


def test_red_cells_taken_for_nucleated_cells_go_even_when_they_outnumber_the_wbc():
    """Four red cells whose dark centres the network called nuclei, one real WBC: pooled with the
    false ones, the nuclei's colour model takes them in; the second look, against the surest
    nucleus alone, drops them and keeps the WBC."""
    from hemaseg.tasks.wbc import reject_red_nuclei

    shape = (200, 300)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rng = np.random.default_rng(1)
    img = np.full(shape + (3,), 240.0)
    far = [(20, 20), (20, 280), (180, 20), (180, 280), (20, 150), (180, 150)]
    for cy, cx in far:  # red cells far from every "cell": the image's red-cell colour
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 14**2] = (205, 115, 125)
    classes = np.zeros(shape, np.uint8)
    instances = np.zeros(shape, np.int32)
    cells = [(100, 60, 28, 13, (90, 45, 135))] + [(100, cx, 16, 9, (185, 85, 105)) for cx in (120, 165, 210, 255)]
    for k, (cy, cx, r, rn, nucleus_rgb) in enumerate(cells, start=1):
        disc, core = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r), ((yy - cy) ** 2 + (xx - cx) ** 2 < rn * rn)
        img[disc] = (185, 170, 215) if k == 1 else (205, 115, 125)
        img[core] = nucleus_rgb
        instances[disc], classes[disc], classes[core] = k, 1, 2
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    c2, i2 = reject_red_nuclei(img, classes, instances, diameter=60)
    assert int(i2.max()) == 1 and i2[100, 60] == 1  # the WBC stays, alone
    assert not i2[100, 120:].any() and not (c2[100, 120:] > 0).any()


def _field_with_touching_red_cell(free_red_cells: bool = True):
    """A WBC (purple nucleus, lilac cytoplasm) with a pink red cell pressed against it that the
    network took for cytoplasm, and (optionally) pink red cells free in the field."""
    shape = (200, 300)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = lambda cy, cx, r: (yy - cy) ** 2 + (xx - cx) ** 2 < r * r  # noqa: E731
    img = np.full(shape + (3,), 235.0)
    free = [(55, 110, 16), (145, 110, 16), (55, 225, 16), (145, 225, 16)]  # inside the WBC's window
    cells = [(100, 190, 16)] + (free if free_red_cells else [])
    for cy, cx, r in cells:
        img[disc(cy, cx, r)] = (215, 120, 130)
    img[disc(100, 150, 28)] = (185, 170, 215)
    img[disc(100, 150, 14)] = (90, 45, 135)
    img = np.clip(img + np.random.default_rng(2).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    classes = np.zeros(shape, np.uint8)
    cell = disc(100, 150, 28) | disc(100, 190, 16)
    classes[cell] = 1
    classes[disc(100, 150, 14)] = 2
    return img, classes, cell.astype(np.int32)


def _pink_cells(region, d, model, exclude=None):
    """A stand-in for the cells model: the pink discs of the region, labelled."""
    from scipy import ndimage as ndi

    return ndi.label((region[..., 0] > 195) & (region[..., 1] < 150))[0].astype(np.int32)


def test_found_red_cells_are_cut_from_the_cytoplasm(monkeypatch):
    import hemaseg.tasks.wbc as W

    img, classes, instances = _field_with_touching_red_cell()
    monkeypatch.setattr(W, "red_cell_labels", _pink_cells)
    c2, i2 = W.reject_found_red_cells(img, classes, instances, diameter=60)
    assert c2[100, 200] == 0 and i2[100, 200] == 0  # the red cell beside the WBC is no longer its cytoplasm
    assert c2[100, 170] == 1 and c2[100, 150] == 2 and i2[100, 150] == 1  # the WBC is whole


def test_found_red_cells_without_free_ones_to_compare_cut_nothing(monkeypatch):
    import hemaseg.tasks.wbc as W

    img, classes, instances = _field_with_touching_red_cell(free_red_cells=False)
    monkeypatch.setattr(W, "red_cell_labels", _pink_cells)
    c2, i2 = W.reject_found_red_cells(img, classes, instances, diameter=60)
    assert (c2 == classes).all() and (i2 == instances).all()


def test_a_found_red_cell_lying_partly_outside_the_wbc_is_cut_by_its_share_outside(monkeypatch):
    """No free red cell to learn the colours from: the vote cuts nothing; ``red_outside`` cuts a red
    cell by its share outside the WBC (here about 0.3), whatever its colour."""
    import hemaseg.tasks.wbc as W

    img, classes, instances = _field_with_touching_red_cell(free_red_cells=False)
    classes[:, 196:], instances[:, 196:] = 0, 0  # the network took only the red cell's near part
    monkeypatch.setattr(W, "red_cell_labels", _pink_cells)
    c2, i2 = W.reject_found_red_cells(img, classes, instances, diameter=60)
    assert (c2 == classes).all() and (i2 == instances).all()  # the default (0.5): about 0.3 lies outside
    c3, i3 = W.reject_found_red_cells(img, classes, instances, diameter=60, p=W.WbcParams(red_outside=0.2))
    assert c3[100, 190] == 0 and i3[100, 190] == 0  # the red cell's near part is no longer cytoplasm
    assert c3[100, 170] == 1 and c3[100, 150] == 2 and i3[100, 150] == 1  # the WBC is whole
    c4, _ = W.reject_found_red_cells(img, classes, instances, diameter=60, p=W.WbcParams(red_outside=0.4))
    assert (c4 == classes).all()  # under 0.4 of it lies outside: it stays
    c5, _ = W.reject_found_red_cells(img, classes, instances, diameter=60, p=W.WbcParams(red_outside=1.01))
    assert (c5 == classes).all()  # above 1: the rule is off


def test_a_cell_whose_nucleus_is_a_found_red_cell_goes_but_not_for_an_oversized_one(monkeypatch):
    import hemaseg.tasks.wbc as W

    img, classes, instances = _field_with_touching_red_cell()
    yy, xx = np.mgrid[:200, :300]
    fold = (yy - 55) ** 2 + (xx - 225) ** 2 < 16**2  # a free red cell the network called a nucleated cell
    classes[fold], instances[fold] = 2, 2
    monkeypatch.setattr(W, "red_cell_labels", _pink_cells)
    c2, i2 = W.reject_found_red_cells(img, classes, instances, diameter=60)
    assert int(i2.max()) == 1 and i2[55, 225] == 0 and i2[100, 150] == 1
    # A "red cell" over twice a red cell's area (60 / 1.8 px across) is not trusted: nothing goes.
    monkeypatch.setattr(W, "red_cell_labels", lambda region, d, model, exclude=None: np.ones(region.shape[:2], np.int32))
    c3, i3 = W.reject_found_red_cells(img, classes, instances, diameter=60)
    assert (c3 == classes).all() and (i3 == instances).all()


def test_found_red_cells_are_not_cut_from_a_grey_image(monkeypatch):
    """Without colour, lightness alone took WBCs' own cytoplasm for red cells: nothing is cut."""
    import hemaseg.tasks.wbc as W

    img, classes, instances = _field_with_touching_red_cell()
    red = _pink_cells(img, 0, None)
    grey = np.repeat(img.mean(-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    monkeypatch.setattr(W, "red_cell_labels", lambda region, d, model, exclude=None: red.copy())
    # (a WBC of 600 px, so that its window is the whole image the stand-in's labels are for)
    c2, i2 = W.reject_found_red_cells(grey, classes, instances, diameter=600)
    assert (c2 == classes).all() and (i2 == instances).all()
    c3, _ = W.reject_found_red_cells(img, classes, instances, diameter=600)  # the same field in colour: cut
    assert c3[100, 200] == 0


def test_each_cell_loses_its_arms_but_not_its_nucleus_nor_the_image_edge():
    from hemaseg.tasks.wbc import open_each_cell

    classes = np.zeros((60, 120), np.uint8)
    classes[0:40, 0:40] = 1  # a cell cut by the image's corner
    classes[5:25, 5:25] = 2
    classes[18:21, 40:90] = 1  # an arm reaching into a red cell
    classes[10:12, 80:95] = 2  # a dark speck at its end, joined only through the arm
    classes[45:55, 100:110] = 1  # a second cell, whole
    classes[48:52, 103:107] = 2
    inst = np.where(classes > 0, 1, 0).astype(np.int32)
    inst[45:55, 100:110] = 2
    c, i = open_each_cell(classes, inst, 0.1)
    assert i[19, 60] == 0 and c[19, 60] == 0  # the arm goes
    assert i[11, 85] == 0  # and what it joined, though it looked like nucleus
    assert i[0, 0] == 1 and i[39, 0] == 1  # the corners on the image's edge stay
    assert (c[5:25, 5:25] == 2).all()  # the nucleus is never cut
    assert i[50, 105] == 2 and (c == 2).sum() == 400 + 16  # the other cell keeps its label
    assert c[0, 0] == 1 and classes[19, 60] == 1  # the input is not modified


def test_a_cell_cut_through_its_nucleus_is_joined_and_two_pressed_cells_are_not():
    from hemaseg.tasks.wbc import join_cut_nuclei, postprocess_classes

    # A long neutrophil with a thin rim of cytoplasm: the split of touching cells cuts it in two.
    classes = np.zeros((80, 200), np.uint8)
    classes[20:60, 20:180] = 1
    classes[26:54, 26:174] = 2
    # Two round cells pressed together, cytoplasm between their nuclei.
    pair = _discs([(40, 40), (40, 76)], 20, (80, 200))
    classes2 = np.where(pair, 1, 0).astype(np.uint8)
    classes2[_discs([(40, 40), (40, 76)], 10, (80, 200))] = 2
    for c, joined_to in ((classes, 1), (classes2, 2)):
        c, inst = postprocess_classes(c, diameter=60)
        assert inst.max() >= 2  # cut (the long cell into several pieces)
        joined = join_cut_nuclei(c, inst, 0.1 * 60)
        assert len(np.unique(joined[joined > 0])) == joined_to
        assert ((joined > 0) == (inst > 0)).all()  # no pixel gained or lost
